"""The experiment harness, apart from the library core: data, models, training, evaluation,
the side-by-side comparison and the command line. The core never imports from here."""
