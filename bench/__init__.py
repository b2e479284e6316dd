"""cdaphne's benchmark suite: ``python -m bench --quick`` or ``--full``.

The modules import only the standard library, so the runner works from the
project's lean ``.venv``; the peer servers, picows and matplotlib live in a
separate venv, ``bench/.work/venv``, that the runner creates and drives through
subprocesses.
"""
