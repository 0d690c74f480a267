"""The command line: parse, call the library, print. Exit status: 0 done, 1 a run failed, 2 bad input, 75
pre-empted (SIGTERM or SIGUSR1; the same command resumes).

The commands live by theme: run.py (run, sweep), browse.py (list, show), report.py (leaderboard, compare,
report), measure.py (cost, bench), storage.py (cache, data, features), paper.py (paper list, plan, run, report),
predict.py (predict: a task served from its delta); group.py is the `transfer-eval` group they attach to,
options.py what they share.
"""

from __future__ import annotations

import sys

import click

from transfer_eval.cli import (
    browse,
    measure,
    paper,
    predict,
    report,
    run,
    storage,
)  # each registers its commands on `cli`
from transfer_eval.cli.group import cli
from transfer_eval.cli.options import show_log
from transfer_eval.errors import UserError
from transfer_eval.io import is_full
from transfer_eval.methods.resume import EXIT_PREEMPTED, Preempted

__all__ = ["cli", "main", "browse", "measure", "paper", "predict", "report", "run", "storage"]


def main():
    show_log()
    try:
        cli.main(prog_name="transfer-eval", standalone_mode=False)
    except UserError as e:
        click.echo(f"transfer-eval: error: {e}", err=True)
        sys.exit(2)
    except Preempted as e:
        click.echo(f"transfer-eval: pre-empted: {e}", err=True)
        sys.exit(EXIT_PREEMPTED)
    except click.exceptions.Abort:
        click.echo("transfer-eval: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a full disk where no writer named what it wrote: still one line
        if not is_full(e):
            raise
        click.echo(f"transfer-eval: error: no space left on a disk ({e}); free some space, then run again", err=True)
        sys.exit(2)
