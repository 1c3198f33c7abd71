"""The leave-one-source-out plan and what its matrix says it cannot show (no training here)."""

from covidct.config import TrainConfig
from covidct.training.crosssource import caveats, trainings


def test_two_sources_train_each_alone_then_both_and_three_add_the_leave_one_out_rows():
    assert trainings(["a", "b"]) == [["a"], ["b"], ["a", "b"]]
    assert trainings(["a", "b", "c"]) == [["a"], ["b"], ["c"], ["b", "c"], ["a", "c"], ["a", "b"], ["a", "b", "c"]]


def test_the_matrix_names_its_seed_and_says_when_a_domain_head_cannot_reach_the_held_out_rows():
    plain = caveats(TrainConfig(seed=7), 2)
    assert len(plain) == 1 and "seed 7" in plain[0]
    dann = caveats(TrainConfig(domain_adversarial=0.1), 2)
    assert any("--domain-adversarial changes only the row trained on both" in c for c in dann)
    # with three sources the all-but-one rows train on two sources: the head does act on held-out rows there
    assert not any("domain" in c for c in caveats(TrainConfig(domain_adversarial=0.1), 3))
