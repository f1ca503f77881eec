"""Shared fixtures: paths to ../shared (golden outputs and data), skipped when absent."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('ASSR_SHARED', ROOT.parent / 'shared'))
GOLDEN = SHARED / 'golden'
DATA = SHARED / 'data'

torch.set_num_threads(min(2, torch.get_num_threads()))


def need(path, what):
    if not path.exists():
        pytest.skip(f'{what} not found at {path} (set ASSR_SHARED to the folder holding golden/ and data/)')
    return path


@pytest.fixture
def golden_dir():
    return need(GOLDEN, 'golden reference outputs')


@pytest.fixture
def data_dir():
    return need(DATA, 'shared image data')


def load_golden(name):
    return torch.load(need(GOLDEN / f'{name}.pt', f'golden case {name}'), weights_only=True)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same RNG state, so a random input cannot make a test flaky."""
    torch.manual_seed(0)
    yield
