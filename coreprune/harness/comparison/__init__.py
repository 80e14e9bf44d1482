"""The matched comparison: coreset vs baselines at the same budgets, with and without fine-tuning.

For each model and seed, a dense model is trained (or loaded from the run folder), then every
method compresses it to each target with the same surgery and the same uniform allocation, so
all methods reach the *same architecture* (identical params and MACs), and each pruned model gets
the same fine-tuning. Rows are appended to `results.csv` as they finish, so an interrupted run
resumes where it stopped. `summarize` gives mean ± std over seeds.

Its rooms: `config` (the settings and the run folder), `run` (dense models, every method at
every target, fine-tuning), `results` (the CSV rows), `summary` (tables and plot).
"""

from coreprune.harness.comparison.config import (
    CORE_METHODS,
    FIELDS,
    METHODS,
    MORE_METHODS,
    RUN_FILES,
    CompareConfig,
    SettingsMismatch,
    check_run,
    prepare_run_folder,
    reachable_maximum,
    settings_differences,
)
from coreprune.harness.comparison.results import read_rows
from coreprune.harness.comparison.run import first_inputs, make_pruner, run_comparison
from coreprune.harness.comparison.summary import (
    markdown_table,
    plot_summary,
    summarize,
    write_summary,
)
from coreprune.training import recalibrated_copy

__all__ = [
    "CORE_METHODS",
    "FIELDS",
    "METHODS",
    "MORE_METHODS",
    "RUN_FILES",
    "CompareConfig",
    "SettingsMismatch",
    "check_run",
    "first_inputs",
    "make_pruner",
    "markdown_table",
    "plot_summary",
    "prepare_run_folder",
    "reachable_maximum",
    "read_rows",
    "recalibrated_copy",
    "run_comparison",
    "settings_differences",
    "summarize",
    "write_summary",
]
