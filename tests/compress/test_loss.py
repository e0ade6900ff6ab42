"""The class-dependent loss: weights, ranking term, and their sum, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgeslim.compress.loss import (
    ClassDependentLoss,
    CrossEntropy,
    GOVERNED,
    FprBudgetGamma,
    adapt_gamma,
    adapt_terms,
    build_loss,
    class_weights,
    critical_scores,
    effective_number_weights,
    ranking_loss,
)
from edgeslim.errors import ConfigError, DataError, EdgeslimError, TrainingError
from edgeslim.recipe import LossSection

torch.set_num_threads(1)


def test_effective_number_weights_match_hand_computed_values():
    # b = 0.1 / (1 - 0.9**n): n=10 -> 0.153534, n=100 -> 0.100003; divided by their mean 0.126768
    w = effective_number_weights([10, 100], beta=0.9)
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([1.2111384574, 0.7888615426], rel=1e-6)
    w3 = effective_number_weights([5, 20, 80], beta=0.99)
    assert w3.tolist() == pytest.approx([2.2093631795, 0.5946452751, 0.1959915455], rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.99999])
def test_effective_number_weights_average_one_and_favour_rare_classes(beta):
    counts = [3, 40, 250, 1000, 7]
    w = effective_number_weights(counts, beta)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-6)
    if beta == 0.0:
        assert torch.allclose(w, torch.ones(5))
    else:
        order = sorted(range(5), key=lambda i: counts[i])
        # rarer class, larger weight (equal once beta**n underflows for large n)
        assert all(w[a] >= w[b] for a, b in zip(order, order[1:]))
        assert w[order[0]] > w[order[-1]]


def test_class_weights_boost_only_critical_classes():
    counts = [100, 25, 100, 60]
    base = effective_number_weights(counts, 0.999)
    w = class_weights(counts, [1, 3], beta=0.999, gamma=5.0)
    assert w[1] == pytest.approx(5.0 * base[1])
    assert w[3] == pytest.approx(5.0 * base[3])
    assert w[0] == pytest.approx(base[0]) and w[2] == pytest.approx(base[2])
    assert torch.allclose(class_weights(counts, [1], beta=0.999, gamma=1.0), base)


@pytest.mark.parametrize(
    "call, err, words",
    [
        (lambda: effective_number_weights([10, 0, 5], 0.9), DataError, "[1]"),
        (lambda: effective_number_weights([], 0.9), DataError, "empty"),
        (lambda: effective_number_weights([10, 5], 1.0), ConfigError, "[0, 1)"),
        (lambda: class_weights([10, 5], [2], beta=0.9, gamma=5), ConfigError, "critical class 2"),
        (lambda: class_weights([10, 5], [1], beta=0.9, gamma=0), ConfigError, "gamma"),
        (lambda: ClassDependentLoss([10, 5], [0], rank_weight=-1), ConfigError, "lambda"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, err, words):
    with pytest.raises(err, match=None) as info:
        call()
    assert isinstance(info.value, EdgeslimError)
    assert words in str(info.value)


def _rank_by_hand(logits, targets, critical, m=1.0):
    """The spec's formula with Python loops and math only."""
    rows = logits.tolist()
    ys = targets.tolist()
    per_class = []
    for c in critical:
        s = [r[c] - math.log(sum(math.exp(v) for j, v in enumerate(r) if j != c)) for r in rows]
        pos = [s[i] for i, y in enumerate(ys) if y == c]
        neg = [s[i] for i, y in enumerate(ys) if y != c]
        if not pos or not neg:
            per_class.append(0.0)
            continue
        terms = [max(0.0, m - (p - n)) ** 2 for p in pos for n in neg]
        per_class.append(sum(terms) / len(terms))
    return sum(per_class) / len(critical)


def test_ranking_loss_matches_the_spec_formula():
    logits = torch.tensor(
        [[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [1.0, 1.0, 1.0], [-0.5, 0.2, 2.5], [0.3, 0.2, 0.1]], dtype=torch.float64
    )
    targets = torch.tensor([0, 1, 0, 2, 1])
    for critical in ([0], [1], [0, 2], [0, 1, 2]):
        got = ranking_loss(logits, targets, critical, margin=1.0)
        assert float(got) == pytest.approx(_rank_by_hand(logits, targets, critical), rel=1e-12)
    assert float(ranking_loss(logits, targets, [0], margin=3.0)) == pytest.approx(
        _rank_by_hand(logits, targets, [0], m=3.0), rel=1e-12
    )
    # s_c for two classes is the logit difference
    two = torch.tensor([[1.0, 3.0], [0.5, -0.5]])
    assert critical_scores(two, 0).tolist() == pytest.approx([-2.0, 1.0])


def test_ranking_gradient_step_raises_critical_scores_of_positives_over_negatives():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    y[:6] = 2  # make sure the critical class has positives
    model = torch.nn.Linear(8, 4)
    torch.nn.init.normal_(model.weight, std=0.1, generator=g)

    def separation():
        with torch.no_grad():
            s = critical_scores(model(x), 2)
            return float(s[y == 2].mean() - s[y != 2].mean())

    before, loss_before = separation(), float(ranking_loss(model(x), y, [2]).detach())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        loss = ranking_loss(model(x), y, [2])
        loss.backward()
        assert model.weight.grad.abs().sum() > 0  # the term is not detached
        opt.step()
    assert separation() > before + 0.1
    assert float(ranking_loss(model(x), y, [2]).detach()) < loss_before


@pytest.mark.parametrize("targets", [[0, 1, 1, 0], [2, 2, 2, 2]], ids=["no-positives", "no-negatives"])
def test_batch_without_positives_or_negatives_gives_zero_with_a_graph(targets):
    logits = torch.randn(4, 3, requires_grad=True)
    loss = ranking_loss(logits, torch.tensor(targets), [2])
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(4, 3))
    assert not torch.isnan(logits.grad).any()


def test_full_loss_is_weighted_ce_plus_lambda_times_rank():
    counts, critical = [50, 10, 40], [1]
    loss_fn = ClassDependentLoss(counts, critical, beta=0.99, gamma=5.0, rank_weight=3.0)
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    w = class_weights(counts, critical, beta=0.99, gamma=5.0)
    wce = torch.stack([-w[t] * F.log_softmax(logits[i], 0)[t] for i, t in enumerate(y.tolist())]).mean()
    rank = ranking_loss(logits, y, critical)
    total = loss_fn(logits, y)
    assert total.item() == pytest.approx((wce + 3.0 * rank).item(), rel=1e-6)
    assert rank.item() > 0
    assert loss_fn.last_parts == pytest.approx({"wce": wce.item(), "rank": rank.item()}, rel=1e-6)
    # the ranking term contributes to the gradient (the released code's lambda = 0 / detach bug)
    g_full = torch.autograd.grad(total, logits)[0]
    g_wce = torch.autograd.grad(ClassDependentLoss(counts, critical, beta=0.99, rank_weight=0.0)(logits, y), logits)[0]
    assert not torch.allclose(g_full, g_wce)


def test_gamma_is_settable_and_reweights_critical_classes():
    loss_fn = ClassDependentLoss([30, 30], [1], beta=0.0, gamma=5.0, rank_weight=0.0)
    assert loss_fn.weight.tolist() == pytest.approx([1.0, 5.0])
    logits, y = torch.zeros(2, 2), torch.tensor([0, 1])
    boosted = float(loss_fn(logits, y))
    loss_fn.gamma = 1.0
    assert loss_fn.weight.tolist() == pytest.approx([1.0, 1.0])
    assert float(loss_fn(logits, y)) == pytest.approx(math.log(2))
    assert boosted == pytest.approx(3.0 * math.log(2))  # (1 + 5) / 2 * log 2


def test_build_loss_follows_the_recipe_section():
    section = LossSection.model_validate({"beta": 0.9, "gamma": 10.0, "lambda": 2.0, "margin": 0.5})
    loss_fn = build_loss(section, [20, 5, 20], [1])
    assert isinstance(loss_fn, ClassDependentLoss)
    assert (loss_fn.beta, loss_fn.gamma, loss_fn.rank_weight, loss_fn.margin) == (0.9, 10.0, 2.0, 0.5)
    assert build_loss(section, [20, 5, 20], [1], gamma=1.0).gamma == 1.0

    ce = build_loss(LossSection(name="cross_entropy"), [20, 5, 20], [1])
    assert isinstance(ce, CrossEntropy)
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 1])
    assert float(ce(logits, y)) == pytest.approx(float(F.cross_entropy(logits, y)))
    assert ce.last_parts["rank"] == 0.0


def test_loss_rejects_logits_of_the_wrong_width():
    with pytest.raises(ConfigError, match="3 classes"):
        ClassDependentLoss([5, 5, 5], [0])(torch.randn(2, 4), torch.tensor([0, 1]))


# -- FPR-budget critical weight ------------------------------------------------------------------------------------


def test_adapt_gamma_moves_multiplicatively_within_bounds():
    rule = dict(budget=0.02, gamma_max=5.0, gamma_min=1.0, down=0.5, up=1.5, slack=0.5)
    assert adapt_gamma(5.0, 0.10, **rule) == 2.5  # over budget: down
    assert adapt_gamma(2.5, 0.021, **rule) == 1.25
    assert adapt_gamma(1.25, 0.5, **rule) == 1.0  # clipped at the floor
    assert adapt_gamma(2.0, 0.005, **rule) == 3.0  # well under (<= slack * budget): up
    assert adapt_gamma(4.0, 0.0, **rule) == 5.0  # clipped at the ceiling
    assert adapt_gamma(2.0, 0.015, **rule) == 2.0  # dead band: unchanged
    assert adapt_gamma(2.0, 0.02, **rule) == 2.0  # exactly at budget is within it
    assert adapt_gamma(2.0, 0.01, **rule) == 3.0  # exactly at the slack line grows
    assert adapt_gamma(2.0, None, **rule) == 2.0  # undefined FPR: no evidence, no move
    # deterministic: the same FPR sequence gives the same trajectory
    fprs = [0.2, 0.05, 0.0, 0.0, 0.03, 0.012]

    def run():
        g, out = 5.0, []
        for f in fprs:
            g = adapt_gamma(g, f, **rule)
            out.append(g)
        return out

    assert run() == run() == [2.5, 1.25, 1.875, 2.8125, 1.40625, 1.40625]


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"budget": 0.0}, "fpr_budget"),
        ({"budget": 1.0}, "fpr_budget"),
        ({"down": 1.0}, "gamma_down"),
        ({"up": 1.0}, "gamma_up"),
        ({"slack": 1.0}, "budget_slack"),
        ({"gamma_min": 6.0}, "gamma bounds"),
    ],
)
def test_adapt_gamma_rejects_bad_rules(kw, words):
    rule = dict(budget=0.02, gamma_max=5.0, gamma_min=1.0, down=0.5, up=1.5, slack=0.5) | kw
    with pytest.raises(ConfigError, match=words):
        adapt_gamma(2.0, 0.1, **rule)


@pytest.fixture(scope="module")
def tiny_digits():
    from edgeslim.artifact import Preprocessing
    from edgeslim.compress.data import load_data

    return load_data(
        "digits", preprocessing=Preprocessing(resize=8, crop=8), image_size=8, critical=["8"],
        max_per_class=40, val_fraction=0.25, test_fraction=0.25, seed=0,
    )


def _biased_model(cls: int):
    """A TinyNet that predicts ``cls`` for every input (critical FPR 1.0 when cls is critical, else 0.0)."""
    from edgeslim.testing import TinyNet

    torch.manual_seed(0)
    m = TinyNet(num_classes=10, width=4)
    with torch.no_grad():
        m.classifier.weight.zero_()
        m.classifier.bias.fill_(-10.0)
        m.classifier.bias[cls] = 10.0
    return m


def test_budget_controller_lowers_gamma_over_budget_raises_it_under_and_records_it(tiny_digits, tmp_path):
    data = tiny_digits
    state = tmp_path / "gamma.json"
    ctl = FprBudgetGamma(data, budget=0.05, gamma_max=5.0, state_path=state)
    loss = ClassDependentLoss(data.class_counts, data.critical, gamma=5.0)
    assert ctl.attach(loss, "round2") == 5.0
    all_eight, no_eight = _biased_model(8), _biased_model(0)
    ctl(1, all_eight)  # FPR 1.0 > 5%: halve
    ctl(2, all_eight)
    assert loss.gamma == 1.25 and ctl.gamma == 1.25
    base = effective_number_weights(data.class_counts, 0.999)
    assert loss.weight[8].item() == pytest.approx(1.25 * base[8].item(), rel=1e-6)  # the weights follow gamma
    ctl(3, no_eight)  # FPR 0 <= slack * budget: grow
    assert loss.gamma == pytest.approx(1.875)
    assert [(r["epoch"], r["gamma"], r["val_fpr"], r["next_gamma"]) for r in ctl.trajectory] == [
        (1, 5.0, 1.0, 2.5), (2, 2.5, 1.0, 1.25), (3, 1.25, 0.0, 1.875)
    ]
    # the next round starts from the carried weight, not from the ceiling
    loss3 = ClassDependentLoss(data.class_counts, data.critical, gamma=5.0)
    assert ctl.attach(loss3, "round3") == pytest.approx(1.875)
    import json

    saved = json.loads(state.read_text())
    assert saved["trajectory"] == ctl.trajectory and saved["rule"]["budget"] == 0.05


def test_budget_controller_resumes_from_the_checkpointed_epoch(tiny_digits, tmp_path):
    data = tiny_digits
    state = tmp_path / "gamma.json"
    ctl = FprBudgetGamma(data, budget=0.05, gamma_max=5.0, state_path=state)
    ctl.attach(ClassDependentLoss(data.class_counts, data.critical), "round2")
    for epoch in (1, 2, 3):  # epoch 3's record was written, then the run died before its checkpoint
        ctl(epoch, _biased_model(8))
    again = FprBudgetGamma(data, budget=0.05, gamma_max=5.0, state_path=state, resume=True)
    loss = ClassDependentLoss(data.class_counts, data.critical)
    assert again.attach(loss, "round2", start_epoch=2) == 1.25  # the gamma epoch 3 used the first time
    assert [r["epoch"] for r in again.trajectory] == [1, 2]
    # without resume the old trajectory is ignored; with another rule it is refused
    assert FprBudgetGamma(data, budget=0.05, gamma_max=5.0, state_path=state).trajectory == []
    with pytest.raises(TrainingError, match="another FPR-budget rule"):
        FprBudgetGamma(data, budget=0.01, gamma_max=5.0, state_path=state, resume=True)
    with pytest.raises(TrainingError, match="lost"):
        again.attach(loss, "round5", start_epoch=4)


def test_budget_controller_refuses_what_it_cannot_adapt(tiny_digits):
    with pytest.raises(ConfigError, match="class_dependent"):
        FprBudgetGamma(tiny_digits, budget=0.05, gamma_max=5.0).attach(CrossEntropy(), "r")
    with pytest.raises(ConfigError, match="fpr_budget is not set"):
        FprBudgetGamma.from_section(LossSection(), tiny_digits)
    ctl = FprBudgetGamma.from_section(LossSection(fpr_budget=0.02, gamma=4.0, gamma_down=0.25), tiny_digits)
    assert ctl.gamma == 4.0
    with pytest.raises(TrainingError, match="attach"):
        ctl(1, _biased_model(0))


def test_budget_controller_drives_fine_tune_epoch_by_epoch(tiny_digits):
    from edgeslim.compress.train import fine_tune
    from edgeslim.recipe import TrainSection
    from edgeslim.testing import TinyNet

    data = tiny_digits
    torch.manual_seed(0)
    model = TinyNet(num_classes=10, width=4)
    loss = ClassDependentLoss(data.class_counts, data.critical, gamma=5.0)
    ctl = FprBudgetGamma(data, budget=0.02, gamma_max=5.0)
    ctl.attach(loss, "dense")
    cfg = TrainSection(epochs=3, lr=0.05, select="last")
    fine_tune(model, data, loss, cfg, seed=0, progress=False, batch_size=32, on_epoch_end=ctl)
    traj = ctl.trajectory
    assert [r["epoch"] for r in traj] == [1, 2, 3]
    for a, b in zip(traj, traj[1:]):
        assert b["gamma"] == a["next_gamma"]  # each epoch trained with the weight decided after the previous
    for r in traj:  # and every decision is the rule applied to the measured FPR
        assert r["next_gamma"] == adapt_gamma(r["gamma"], r["val_fpr"], budget=0.02, gamma_max=5.0)
    assert loss.gamma == traj[-1]["next_gamma"]


# -- the budget governs every term that moves the critical operating point -------------------------------------------


def test_adapt_terms_lowers_gamma_then_lambda_then_the_balance_and_says_when_it_cannot_hold():
    rule = dict(ceilings={"gamma": 4.0, "rank_weight": 2.0, "balance": 1.0}, budget=0.02, down=0.5, up=1.5, slack=0.5)
    terms = {"gamma": 4.0, "rank_weight": 2.0, "balance": 1.0}
    seen = []
    for _ in range(9):  # always over budget
        terms, held = adapt_terms(terms, 0.5, **rule)
        seen.append((terms["gamma"], terms["rank_weight"], terms["balance"], held))
    assert seen == [
        (2.0, 2.0, 1.0, True), (1.0, 2.0, 1.0, True),  # gamma first, to its floor
        (1.0, 1.0, 1.0, True), (1.0, 0.5, 1.0, True), (1.0, 0.0, 1.0, True),  # then lambda (snaps to 0)
        (1.0, 0.0, 0.5, True), (1.0, 0.0, 0.25, True), (1.0, 0.0, 0.0, True),  # then the balance
        (1.0, 0.0, 0.0, False),  # every term at its floor and still over: it cannot hold
    ]
    # well under budget, restored in reverse order: balance, then lambda, and the boost last
    up = []
    for _ in range(3):
        terms, held = adapt_terms(terms, 0.0, **rule)
        up.append((terms["gamma"], terms["rank_weight"], terms["balance"]))
    assert up == [(1.0, 0.0, 0.25), (1.0, 0.0, 0.375), (1.0, 0.0, 0.5625)]
    # gamma's ceiling is the training's own: in round 1 of the paper's schedule (ceiling 1) lambda still acts
    r1 = dict(rule, ceilings={"gamma": 1.0, "rank_weight": 2.0, "balance": 1.0})
    assert adapt_terms({"gamma": 1.0, "rank_weight": 2.0, "balance": 1.0}, 0.5, **r1)[0]["rank_weight"] == 1.0
    assert GOVERNED == ("gamma", "rank_weight", "balance")


def test_critical_balance_at_zero_leaves_no_up_weight_for_a_rare_critical_class():
    loss = ClassDependentLoss([100, 10], [1], beta=0.999, gamma=3.0, rank_weight=0.0)
    base = effective_number_weights([100, 10], 0.999)
    assert base[1] > 1.0 and loss.weight[1].item() == pytest.approx(3.0 * base[1].item())
    loss.critical_balance = 0.0
    assert loss.weight[1].item() == pytest.approx(3.0) and loss.weight[0].item() == pytest.approx(base[0].item())
    loss.critical_balance = 0.5
    assert loss.weight[1].item() == pytest.approx(3.0 * (1 + 0.5 * (base[1].item() - 1)))
    loss.gamma = 1.0  # gamma keeps the balance it was given
    assert loss.weight[1].item() == pytest.approx(1 + 0.5 * (base[1].item() - 1))
    with pytest.raises(ConfigError, match="critical_balance"):
        loss.critical_balance = 1.5


def test_budget_acts_in_round_one_of_the_paper_schedule_and_warns_when_it_cannot_hold(tiny_digits, caplog):
    data = tiny_digits
    ctl = FprBudgetGamma(data, budget=0.05, gamma_max=5.0, rank_max=2.0)
    loss = ClassDependentLoss(data.class_counts, data.critical, gamma=1.0, rank_weight=2.0)
    assert ctl.attach(loss, "round1", gamma_ceiling=1.0) == 1.0  # round 1: gamma capped at 1 ...
    all_eight = _biased_model(8)
    out = ctl(1, all_eight)  # ... but the budget acts: lambda halves
    assert loss.rank_weight == 1.0 and loss.gamma == 1.0
    assert out["budget_held"] is True and out["val_critical_fpr"] == 1.0 and out["fpr_budget"] == 0.05
    # a training that stopped here ended over the budget: its summary does not call that held
    early = ctl.summary()
    assert early["held"] is False and early["over_at_end"] is True and early["unheld"] == []
    with caplog.at_level("WARNING", logger="edgeslim.compress.loss"):
        for epoch in range(2, 9):
            out = ctl(epoch, all_eight)
    assert loss.rank_weight == 0.0 and loss.critical_balance == 0.0 and loss.gamma == 1.0
    assert out["budget_held"] is False and "cannot hold the budget" in caplog.text
    summary = ctl.summary()
    assert summary["held"] is False and summary["unheld"][-1]["epoch"] == 8
    # round 2: gamma was never lowered by the budget (round 1 capped it), so round 2 may use its full 5
    loss2 = ClassDependentLoss(data.class_counts, data.critical, gamma=5.0, rank_weight=2.0)
    assert ctl.attach(loss2, "round2") == 5.0
    assert loss2.rank_weight == 0.0 and loss2.critical_balance == 0.0  # the others carry over

