"""The rules of a job's life, pure: who sees a job, who may do what, and which status
follows which (created -> assigned -> picked_up -> completing -> completed; cancelled
before pickup)."""

from dataclasses import dataclass
from enum import StrEnum

from jobs.errors import Conflict, Forbidden, NotFound
from schemas.auth import Principal, Role
from schemas.jobs import JobStatus, visible_to


class Action(StrEnum):
    """What can be done to a job, by a person or the platform."""

    ASSIGN = "assign"
    PICKUP = "pickup"
    COMPLETE = "complete"  # the proof is accepted; a worker finishes it
    FINISH = "finish"  # the worker, after processing the proof
    REFUSE_PROOF = "refuse_proof"  # the worker: the proof was broken; the driver sends another
    CANCEL = "cancel"


@dataclass(frozen=True)
class Rule:
    """Who may take an action, and from which statuses to which."""

    roles: frozenset[Role]
    before: frozenset[JobStatus]
    after: JobStatus
    # Only the driver the job is assigned to (for driver actions).
    assigned_driver_only: bool = False


S = JobStatus
RULES: dict[Action, Rule] = {
    # A dispatcher may assign again (another driver) until the pickup.
    Action.ASSIGN: Rule(
        frozenset({Role.DISPATCHER}), frozenset({S.CREATED, S.ASSIGNED}), S.ASSIGNED
    ),
    Action.PICKUP: Rule(frozenset({Role.DRIVER}), frozenset({S.ASSIGNED}), S.PICKED_UP, True),
    Action.COMPLETE: Rule(frozenset({Role.DRIVER}), frozenset({S.PICKED_UP}), S.COMPLETING, True),
    Action.FINISH: Rule(frozenset(), frozenset({S.COMPLETING}), S.COMPLETED),
    Action.REFUSE_PROOF: Rule(frozenset(), frozenset({S.COMPLETING}), S.PICKED_UP),
    # Once the goods are picked up, the job ends by delivery, not by a cancel.
    Action.CANCEL: Rule(
        frozenset({Role.CUSTOMER, Role.DISPATCHER}), frozenset({S.CREATED, S.ASSIGNED}), S.CANCELLED
    ),
}

CREATORS = frozenset({Role.CUSTOMER, Role.DISPATCHER})


@dataclass(frozen=True)
class Owners:
    """Whose job it is: the fields visibility depends on."""

    customer_id: str | None
    driver_id: str | None


def visible(who: Principal, job: Owners) -> bool:
    return visible_to(who, job.customer_id, job.driver_id)


def check_visible(who: Principal, job: Owners | None, job_id: object) -> Owners:
    """The job, or NotFound: someone else's job is as unknown as a missing one."""
    if job is None or not visible(who, job):
        raise NotFound(f"no job {job_id}")
    return job


def next_status(who: Principal | None, action: Action, job: Owners, status: JobStatus) -> JobStatus:
    """The status `action` leads to, after checking the caller may take it (None: the
    platform itself, such as the proof worker). Raises Forbidden or Conflict."""
    if who is not None:
        check_allowed(who, action, job)
    check_status(action, status)
    return RULES[action].after


def check_status(action: Action, status: JobStatus) -> None:
    """Conflict unless a job in `status` may take `action`."""
    if status not in RULES[action].before:
        raise Conflict(f"cannot {action.value} a job that is {status.value}")


def check_allowed(who: Principal, action: Action, job: Owners) -> None:
    """Forbidden unless the caller may take `action` on this job, whatever its status."""
    rule = RULES[action]
    if who.role not in rule.roles:
        raise Forbidden(f"role {who.role.value!r} may not {action.value} a job")
    if rule.assigned_driver_only and job.driver_id != who.sub:
        raise Forbidden(f"only the assigned driver may {action.value} this job")


def check_creator(who: Principal, customer_id: str | None) -> str | None:
    """The customer a new job belongs to: a customer's own, or the one a dispatcher names."""
    if who.role not in CREATORS:
        raise Forbidden(f"role {who.role.value!r} may not create jobs")
    if who.role == Role.CUSTOMER:
        if customer_id not in (None, who.sub):
            raise Forbidden("a customer creates jobs for themselves only")
        return who.sub
    return customer_id
