from pathlib import Path

from ssd_detector.errors import DataError
from ssd_detector.failure import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, run_job, write_failure


def test_user_error_writes_reason_and_exits_1(tmp_path: Path):
    failure = tmp_path / "output" / "failure"

    def job():
        raise DataError("channel 'train' has 2 problem(s): a.json: bad")

    assert run_job(job, failure) == EXIT_USER_ERROR
    assert failure.read_text() == "channel 'train' has 2 problem(s): a.json: bad\n"


def test_internal_error_writes_traceback_tail_and_exits_2(tmp_path: Path):
    failure = tmp_path / "failure"

    def job():
        {}["missing"]

    assert run_job(job, failure) == EXIT_INTERNAL_ERROR
    text = failure.read_text()
    assert text.startswith("internal error: KeyError: 'missing'")
    assert "Traceback" in text and "in job" in text


def test_first_failure_wins(tmp_path: Path):
    failure = tmp_path / "failure"
    assert write_failure(failure, "first")
    assert not write_failure(failure, "second")
    assert run_job(lambda: (_ for _ in ()).throw(DataError("third")), failure) == EXIT_USER_ERROR
    assert failure.read_text() == "first\n"


def test_success_writes_nothing(tmp_path: Path):
    assert run_job(lambda: None, tmp_path / "failure") == 0
    assert not (tmp_path / "failure").exists()
