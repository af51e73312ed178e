"""Early stopping on validation mAP, as the built-in's hyperparameters describe it."""
from ssd_detector.config import parse_hyperparameters
from ssd_detector.training.checkpoint import LoopState
from ssd_detector.training.early_stopping import EarlyStopping, epochs_since_validation, validates


def run(rule: EarlyStopping, values: list[float]) -> tuple[LoopState, list[tuple[bool, bool]]]:
    state = LoopState()
    verdicts = []
    for epoch, value in enumerate(values):
        verdict = rule.observe(state, epoch, value)
        verdicts.append((verdict.improved, verdict.stop))
        if verdict.stop:
            break
    return state, verdicts


def test_from_the_hyperparameters():
    hp = parse_hyperparameters({"num_classes": "2", "early_stopping": "true", "early_stopping_min_epochs": "3",
                                "early_stopping_patience": "2", "early_stopping_tolerance": "0.05"})
    assert EarlyStopping.from_hyperparameters(hp) == EarlyStopping(True, 3, 2, 0.05)
    assert not EarlyStopping.from_hyperparameters(parse_hyperparameters({"num_classes": "2"})).enabled


def test_disabled_it_only_keeps_the_best():
    state, verdicts = run(EarlyStopping(enabled=False, min_epochs=1, patience=1), [0.2, 0.1, 0.1, 0.3, 0.25])
    assert [improved for improved, _ in verdicts] == [True, False, False, True, False]
    assert not any(stop for _, stop in verdicts)
    assert (state.best_map, state.best_epoch, state.epochs_without_improvement) == (0.3, 3, 1)


def test_stops_after_patience_epochs_without_improvement():
    state, verdicts = run(EarlyStopping(True, min_epochs=1, patience=2), [0.2, 0.3, 0.3, 0.29, 0.5])
    assert verdicts == [(True, False), (True, False), (False, False), (False, True)]
    assert (state.best_map, state.best_epoch) == (0.3, 1)


def test_never_before_min_epochs():
    _, verdicts = run(EarlyStopping(True, min_epochs=5, patience=1), [0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert [stop for _, stop in verdicts] == [False, False, False, False, True]  # epoch 4 is the fifth


def test_tolerance_is_relative_to_the_best():
    rule = EarlyStopping(True, min_epochs=1, patience=3, tolerance=0.1)
    state, verdicts = run(rule, [0.5, 0.54, 0.549, 0.6])
    # 0.54 and 0.549 are within 10 % of 0.5: no improvement; 0.6 is 20 % more.
    assert [improved for improved, _ in verdicts] == [True, False, False, True]
    assert state.best_map == 0.6 and state.epochs_without_improvement == 0


def test_a_zero_best_is_beaten_by_any_gain():
    """A relative tolerance of nothing would never let the first real figure in."""
    state, verdicts = run(EarlyStopping(True, min_epochs=1, patience=5, tolerance=0.5), [0.0, 0.0, 0.01])
    assert [improved for improved, _ in verdicts] == [True, False, True]
    assert state.best_epoch == 2


def test_resumed_state_carries_on():
    """The counters live in the checkpointed loop state: a resumed job stops where it would have."""
    rule = EarlyStopping(True, min_epochs=1, patience=2)
    state = LoopState(next_epoch=3, best_map=0.4, best_epoch=1, epochs_without_improvement=1)
    assert rule.observe(state, 3, 0.39).stop


def test_validation_every_nth_epoch_and_the_last():
    assert [e for e in range(10) if validates(e, 1, 10)] == list(range(10))
    assert [e for e in range(10) if validates(e, 4, 10)] == [3, 7, 9]
    assert [e for e in range(8) if validates(e, 4, 8)] == [3, 7]
    assert [e for e in range(3) if validates(e, 5, 3)] == [2]  # fewer epochs than the interval
    # The validated epochs' distances from the one before (the first: from the start).
    assert [epochs_since_validation(e, 4) for e in (3, 7, 9)] == [4, 4, 2]
    assert epochs_since_validation(6, 1) == 1


def test_patience_counts_epochs_between_validations():
    rule = EarlyStopping(True, min_epochs=1, patience=4)
    state = LoopState()
    assert rule.observe(state, 1, 0.5, epochs=2).improved
    assert not rule.observe(state, 3, 0.4, epochs=2).stop  # 2 epochs without improvement
    verdict = rule.observe(state, 5, 0.4, epochs=2)
    assert verdict.stop and state.epochs_without_improvement == 4
