"""training.data: each epoch's order of batches, a function of seed and epoch alone; the dtype of inputs.
"""



import pyarrow as pa
import pytest
import torch

from tasks.data.tables import TOKENS_KEY
from tasks.training.data import epoch_order, input_dtype


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_order(100, seed=1, epoch=3, rank=0, world=2, batch=8)
    assert a.shape == (6, 8)  # 50 rows a rank, 6 whole batches
    assert torch.equal(a, epoch_order(100, 1, 3, 0, 2, 8))
    assert not torch.equal(a, epoch_order(100, 1, 4, 0, 2, 8))
    both = torch.cat([a.flatten(), epoch_order(100, 1, 3, 1, 2, 8).flatten()])
    assert len(set(both.tolist())) == len(both)  # ranks never share a row


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_token_ids_reach_the_model_exact_in_half_precision(precision):
    values = pa.schema([("x0", pa.float32())])
    tokens = values.with_metadata({TOKENS_KEY: b"50257"})
    assert input_dtype(precision, values) == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    ids = torch.tensor([[50256.0, 1999.0, 257.0, 3.0, 0.0]])  # bf16 would give 50176, 2000, 256
    assert ids.to(input_dtype(precision, tokens)).long().tolist() == [[50256, 1999, 257, 3, 0]]
    assert input_dtype("fp32", tokens) == input_dtype("fp32", values) == torch.float32
