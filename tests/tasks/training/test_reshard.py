"""training.reshard: the rest of an interrupted epoch dealt out to another number of processes.
"""


from dataclasses import replace

import torch

from tasks.params import Train
from tasks.training import reshard
from tasks.training.data import epoch_batches, epoch_order
from tasks.training.reshard import rest_of_epoch
from tasks.training.state import LoopState


def test_a_resharded_epoch_deals_out_exactly_the_rows_the_old_processes_had_not_reached():
    old = torch.stack([epoch_order(100, seed=1, epoch=2, rank=r, world=2, batch=4) for r in range(2)])  # (2, 12, 4)
    seen, left = set(old[:, :3].flatten().tolist()), set(old[:, 3:].flatten().tolist())
    for world in (1, 3, 4):
        new = [rest_of_epoch(old, 3, r, world) for r in range(world)]
        rows = torch.cat([b.flatten() for b in new]).tolist()
        assert {b.shape for b in new} == {(len(left) // world // 4, 4)}  # whole batches, as many on every rank
        assert len(set(rows)) == len(rows) and set(rows) <= left and not set(rows) & seen
        assert len(left) - len(rows) < world * 4  # at most a last part-batch a rank left out, as epoch_order does


def test_handovers_chain_so_every_row_of_the_epoch_is_trained_once():
    p = Train(batch_size=4, seed=1)
    # 2 processes did 3 batches of epoch 2, then 1 process took over and did 4 of what it was dealt
    state = reshard.hand_over(LoopState(epoch=2, batch=3), old_world=2)
    assert state == LoopState(epoch=2, batch=0, resharded={"epoch": 2, "handovers": [[2, 3]]})
    state = reshard.hand_over(replace(state, batch=4), old_world=1)
    assert state.resharded["handovers"] == [[2, 3], [1, 4]] and state.batch == 0
    first = [epoch_order(100, 1, 2, r, 2, 4) for r in range(2)]
    second = epoch_batches(100, p, 2, 0, 1, {"epoch": 2, "handovers": [[2, 3]]})
    third = [epoch_batches(100, p, 2, r, 3, state.resharded) for r in range(3)]
    trained = [b[:3] for b in first] + [second[:4]] + third
    rows = torch.cat([b.flatten() for b in trained]).tolist()
    assert len(rows) == len(set(rows))  # no row twice
    epoch = set(torch.cat([b.flatten() for b in first]).tolist())
    assert set(rows) <= epoch and len(epoch - set(rows)) < 3 * 4  # only a part-batch a rank left out at the end
    assert epoch_batches(100, p, 3, 0, 3, state.resharded).equal(epoch_order(100, 1, 3, 0, 3, 4))  # later epochs
