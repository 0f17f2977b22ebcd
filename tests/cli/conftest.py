"""Fixtures shared by the command-line tests.

``fake_engine``, the stand-in for ``train_net.py`` that writes detectron2's files, is defined next to the runner's
own tests in tests/test_trials.py and re-exported here for test_trials_cli.py."""
from tests.test_trials import fake_engine as fake_engine
