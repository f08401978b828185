"""Course labs: the student edition, grading an instructor can trust, and nbgrader metadata.

    python -m minimistral.labs student --out DIR [--bundle] [NOTEBOOK ...]
    python -m minimistral.labs grade SUBMISSION ... [--source DIR] [--csv grades.csv] [--jobs N]
    python -m minimistral.labs tag [NOTEBOOK ...] [--check]

Modules: exercises (finding exercises), edition (student edition, bundle, tags), checks (the checks notebooks
call), codec (plain-data messages), sandbox and worker (isolation), grade and runner (the trusted grader),
report (driver, table, CSV), cli.
"""

from .exercises import (BEGIN, END, NOTEBOOKS_DIR, STUB, Exercise, LabsError, check_ids, default_notebooks,
                        find_exercises, solution_regions)
from .edition import student_notebook, stub_source, tag, write_bundle, write_student_edition, local_files
from .cli import main

__all__ = ["BEGIN", "END", "NOTEBOOKS_DIR", "STUB", "Exercise", "LabsError", "check_ids", "default_notebooks",
           "find_exercises", "solution_regions", "student_notebook", "stub_source", "tag", "write_bundle",
           "write_student_edition", "local_files", "main"]
