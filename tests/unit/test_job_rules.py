"""A job's rules, pure: transitions, who may take them, who sees a job."""

import uuid

import pytest

from jobs import store as job_store
from jobs.errors import Conflict, Forbidden, NotFound
from jobs.rules import RULES, Action, Owners, check_creator, check_visible, next_status
from schemas.auth import Principal, Role
from schemas.jobs import JobStatus

S = JobStatus
DISPATCHER = Principal(sub="disp-1", role=Role.DISPATCHER)
CUSTOMER = Principal(sub="cus-1", role=Role.CUSTOMER)
DRIVER = Principal(sub="drv-1", role=Role.DRIVER)
OTHER_DRIVER = Principal(sub="drv-2", role=Role.DRIVER)
OPS = Principal(sub="ops-1", role=Role.OPS)
JOB = Owners(customer_id="cus-1", driver_id="drv-1")


def test_the_happy_path_moves_forward_one_step_at_a_time() -> None:
    status = S.CREATED
    for who, action, expected in (
        (DISPATCHER, Action.ASSIGN, S.ASSIGNED),
        (DRIVER, Action.PICKUP, S.PICKED_UP),
        (DRIVER, Action.COMPLETE, S.COMPLETING),
        (None, Action.FINISH, S.COMPLETED),
    ):
        status = next_status(who, action, JOB, status)
        assert status == expected


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("action", list(Action))
def test_every_transition_not_in_the_table_is_a_conflict(action: Action, status: S) -> None:
    rule = RULES[action]
    who = (
        None
        if not rule.roles
        else next(p for p in (DISPATCHER, CUSTOMER, DRIVER) if p.role in rule.roles)
    )
    if status in rule.before:
        assert next_status(who, action, JOB, status) == rule.after
    else:
        with pytest.raises(Conflict):
            next_status(who, action, JOB, status)


def test_roles_and_the_assigned_driver_are_checked_before_the_status() -> None:
    with pytest.raises(Forbidden):
        next_status(CUSTOMER, Action.ASSIGN, JOB, S.CREATED)
    with pytest.raises(Forbidden):
        next_status(OTHER_DRIVER, Action.PICKUP, JOB, S.ASSIGNED)
    with pytest.raises(Forbidden):
        next_status(DRIVER, Action.CANCEL, JOB, S.CREATED)
    with pytest.raises(Forbidden):  # only the platform finishes a completion
        next_status(DISPATCHER, Action.FINISH, JOB, S.COMPLETING)
    with pytest.raises(Conflict):  # no cancel once the goods are picked up
        next_status(CUSTOMER, Action.CANCEL, JOB, S.PICKED_UP)


def test_a_customer_sees_their_own_a_driver_their_assigned_a_dispatcher_all() -> None:
    foreign = Owners(customer_id="cus-2", driver_id="drv-2")
    for who in (DISPATCHER, OPS, CUSTOMER, DRIVER):
        assert check_visible(who, JOB, "j") == JOB
    for who in (CUSTOMER, DRIVER):
        with pytest.raises(NotFound):  # someone else's job is unknown, not forbidden
            check_visible(who, foreign, "j")
    with pytest.raises(NotFound):
        check_visible(DISPATCHER, None, "j")


def test_who_creates_jobs_for_whom() -> None:
    assert check_creator(CUSTOMER, None) == "cus-1"
    assert check_creator(CUSTOMER, "cus-1") == "cus-1"
    with pytest.raises(Forbidden):
        check_creator(CUSTOMER, "cus-2")
    assert check_creator(DISPATCHER, "cus-9") == "cus-9"
    assert check_creator(DISPATCHER, None) is None
    for who in (DRIVER, OPS):
        with pytest.raises(Forbidden):
            check_creator(who, None)


def test_cursors_round_trip_and_refuse_what_the_api_did_not_make() -> None:
    job_id = uuid.uuid4()
    assert job_store.decode_cursor(job_store.encode_cursor(job_id)) == job_id
    for junk in ("", "abc", "!!!!", "x" * 40):
        with pytest.raises(ValueError):
            job_store.decode_cursor(junk)


def test_the_idempotency_hash_covers_method_path_and_body() -> None:
    base = job_store.request_hash("POST", "/v1/jobs", b"{}")
    assert base == job_store.request_hash("POST", "/v1/jobs", b"{}")
    assert base != job_store.request_hash("POST", "/v1/jobs", b"{ }")
    assert base != job_store.request_hash("POST", "/v1/jobs/x/assign", b"{}")
