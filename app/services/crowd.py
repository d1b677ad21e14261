"""Crowd-platform sign-in: reusable links for Prolific or MTurk participants.

An admin makes a crowd invite (platform, quota of tasks, session length, completion code and URL)
and pastes its link into the platform, which opens it with the participant's ids in the URL. The
first visit of a participant id makes an annotator account without a password, tied to (link,
participant id), with the link's quota and a time limit counted from that first visit; later visits
resume the same account. Every visit records the study and session ids it came with. The quota and
the time limit are columns of the user (User.task_quota, User.work_ends_at), which the lease path
checks (app/services/tasks.py). A participant whose quota is done gets the completion code and is
sent back to the completion URL.

New accounts are limited (one person could otherwise mint accounts, each with a fresh quota, by
inventing participant ids): an admin may cap a link's participants (max_participants; then "full",
410), and new accounts per link and per client address within a window are throttled (429 with
Retry-After; Settings.crowd_accounts_per_*), with the login throttle's counters (app/services/logins.py).

One account per link and participant: a participant of two studies (two links) has two accounts,
each with its own quota.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import CROWD_PLATFORMS, Assignment, CrowdInvite, CrowdParticipant, CrowdVisit, User, utcnow
from app.security import new_token
from app.services import logins
from app.services.errors import Forbidden, Invalid, NotFound, ServiceError

# The URL parameters each platform fills in: (participant, study, session).
PLATFORM_PARAMS = {
    "prolific": ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID"),
    "mturk": ("workerId", "hitId", "assignmentId"),
}
PLATFORM_NAMES = {"prolific": "Prolific", "mturk": "MTurk"}
# Prolific's ids are 24 hex digits and MTurk's about 30 capitals and digits: 40 leaves room, and a
# username made of platform, link id and participant id stays within 64 characters.
PLATFORM_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
MTURK_PREVIEW = "ASSIGNMENT_ID_NOT_AVAILABLE"  # MTurk's assignmentId while a worker only previews the HIT
COMPLETION_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_QUOTA = 10_000
MAX_SESSION_MINUTES = 24 * 60
MAX_PARTICIPANTS = 100_000
# A crowd account signs in only through its link: no password hash matches this (Argon2 refuses it).
NO_PASSWORD = "!crowd"


class Closed(ServiceError):
    status_code = 410


@dataclass(frozen=True)
class NewAccountLimits:
    """How many participant accounts may be made per link and per client address within a window."""

    per_link: int
    per_address: int
    window: timedelta

    @classmethod
    def of(cls, settings: Settings) -> "NewAccountLimits":
        return cls(settings.crowd_accounts_per_link, settings.crowd_accounts_per_address,
                   timedelta(seconds=settings.crowd_window_seconds))


@dataclass(frozen=True)
class PlatformIds:
    participant: str
    study: str
    session: str


class CrowdInviteInfo(BaseModel):
    """A crowd link as the admin sees it, with its progress."""

    id: int
    token: str
    name: str
    platform: str
    task_quota: int
    session_minutes: int | None
    max_participants: int | None = Field(description="the most participants this link takes; null: no cap")
    completion_code: str
    completion_url: str
    created_at: datetime
    closed_at: datetime | None
    link: str = Field(description="the path to paste into the platform (after the site's origin), with placeholders for the ids")
    participants: int
    finished: int = Field(description="participants whose quota is done")
    judgements: int


def _refuse(field: str, message: str):
    raise Invalid(f"{field}: {message}", [{"loc": ["body", field], "msg": message}])


def check_completion_url(url: str) -> str:
    """An absolute http(s) URL without spaces or control characters; e.g. Prolific's
    https://app.prolific.com/submissions/complete?cc=CODE."""
    url = url.strip()
    if not url or len(url) > 500:
        _refuse("completion_url", "must be 1 to 500 characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        _refuse("completion_url", "must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        _refuse("completion_url", "must be an absolute http:// or https:// URL")
    return url


def create_crowd_invite(db: Session, created_by: User | None, *, platform: str, task_quota: int,
                        completion_code: str, completion_url: str, session_minutes: int | None = None,
                        max_participants: int | None = None, name: str = "") -> CrowdInvite:
    if platform not in CROWD_PLATFORMS:
        _refuse("platform", f"must be one of {', '.join(CROWD_PLATFORMS)}")
    if not 1 <= task_quota <= MAX_QUOTA:
        _refuse("task_quota", f"must be 1 to {MAX_QUOTA} tasks")
    if session_minutes is not None and not 1 <= session_minutes <= MAX_SESSION_MINUTES:
        _refuse("session_minutes", f"must be 1 to {MAX_SESSION_MINUTES} minutes, or empty for no limit")
    if max_participants is not None and not 1 <= max_participants <= MAX_PARTICIPANTS:
        _refuse("max_participants", f"must be 1 to {MAX_PARTICIPANTS}, or empty for no cap")
    completion_code = completion_code.strip()
    if not COMPLETION_CODE.fullmatch(completion_code):
        _refuse("completion_code", "must be 1 to 64 letters, digits, '-' or '_'")
    if len(name) > 200:
        _refuse("name", "at most 200 characters")
    invite = CrowdInvite(token=new_token(), name=name.strip(), platform=platform, task_quota=task_quota,
                         session_minutes=session_minutes, max_participants=max_participants,
                         completion_code=completion_code,
                         completion_url=check_completion_url(completion_url),
                         created_by_id=created_by.id if created_by else None)
    db.add(invite)
    db.flush()
    return invite


def open_crowd_invite(db: Session, token: str) -> CrowdInvite:
    invite = db.scalar(select(CrowdInvite).where(CrowdInvite.token == token))
    if invite is None:
        raise NotFound("this study link is unknown; check that you copied all of it")
    if invite.closed_at is not None:
        raise Closed("this study link is closed: the study has ended or is full. Please return to the platform.")
    return invite


def platform_ids(platform: str, params: Mapping[str, str]) -> PlatformIds:
    """The participant, study and session ids from the link's URL parameters, checked; Invalid
    naming each missing or malformed parameter."""
    names = PLATFORM_PARAMS[platform]
    if platform == "mturk" and params.get("assignmentId") == MTURK_PREVIEW:
        raise Invalid("this is a preview of the HIT: accept the HIT first, then open the link again")
    problems = []
    for name in names:
        value = params.get(name, "")
        if not value:
            problems.append({"loc": ["query", name], "msg": "missing"})
        elif not PLATFORM_ID.fullmatch(value):
            problems.append({"loc": ["query", name], "msg": "must be 1 to 40 letters, digits, '-' or '_'"})
    if problems:
        listed = ", ".join(f"{p['loc'][1]} ({p['msg']})" for p in problems)
        raise Invalid(f"this link lacks the {PLATFORM_NAMES[platform]} ids it needs: {listed}. "
                      f"Open it from {PLATFORM_NAMES[platform]} again.", problems)
    return PlatformIds(*(params[name] for name in names))


def join(db: Session, token: str, ids: PlatformIds, now: datetime, address: str, limits: NewAccountLimits) -> User:
    """The participant's account on this link, made on their first visit (annotator, no password,
    the link's quota, time counted from now) within the limits on new accounts, else the one they
    already have; records this visit."""
    invite = open_crowd_invite(db, token)
    participant = _participant(db, invite.id, ids.participant)
    if participant is None:
        _admit_new_account(db, invite, address, now, limits)
        try:
            with db.begin_nested():  # a second tab of the same first visit may make it meanwhile
                participant = _new_participant(db, invite, ids.participant, now)
        except IntegrityError:
            participant = _participant(db, invite.id, ids.participant)
            if participant is None:
                raise
    user = db.get(User, participant.user_id)
    if not user.is_active:
        raise Forbidden("this account is deactivated; please contact the researcher through the platform")
    db.add(CrowdVisit(participant_id=participant.id, study_id=ids.study, session_id=ids.session, created_at=now))
    db.flush()
    return user


def _admit_new_account(db: Session, invite: CrowdInvite, address: str, now: datetime, limits: NewAccountLimits) -> None:
    """Counts a new account against the link's and the address's throttle (Throttled, 429, when one is
    full: raising rolls the counts back) and the link's cap (Closed, 410, when full). The link's counter
    is taken first: on PostgreSQL its row stays locked until the commit, so that concurrent first visits
    count the link's participants one after the other and the cap holds exactly."""
    for kind, value, limit, refusal in (
            ("crowd-link", str(invite.id), limits.per_link, "Too many new participants on this study link just now"),
            ("crowd-address", address, limits.per_address, "Too many new participants from your address")):
        count, ends_at = logins.count_attempt(db, kind, value, now, limits.window)
        if count > limit:
            retry_after = logins.retry_after_seconds(ends_at, now)
            raise logins.Throttled(logins.retry_message(refusal, retry_after), retry_after)
    if invite.max_participants is not None:
        joined = db.scalar(select(func.count()).select_from(CrowdParticipant).where(CrowdParticipant.invite_id == invite.id))
        if joined >= invite.max_participants:
            raise Closed("this study is full: it has all the participants it needs. Please return to the platform.")


def _participant(db: Session, invite_id: int, participant_id: str) -> CrowdParticipant | None:
    return db.scalar(select(CrowdParticipant).where(CrowdParticipant.invite_id == invite_id,
                                                    CrowdParticipant.participant_id == participant_id))


def participant_username(invite: CrowdInvite, participant_id: str) -> str:
    """The account name of a participant: "prolific:3:<PID>". The colons keep it apart from every
    name a person can choose (users.py allows letters, digits, '.', '-' and '_'), so that no sign-up
    or admin can take a participant's name first."""
    return f"{invite.platform}:{invite.id}:{participant_id}"


def _new_participant(db: Session, invite: CrowdInvite, participant_id: str, now: datetime) -> CrowdParticipant:
    ends = now + timedelta(minutes=invite.session_minutes) if invite.session_minutes else None
    user = User(username=participant_username(invite, participant_id), password_hash=NO_PASSWORD,
                role="annotator", task_quota=invite.task_quota, work_ends_at=ends, created_at=now)
    db.add(user)
    db.flush()
    participant = CrowdParticipant(invite_id=invite.id, user_id=user.id, participant_id=participant_id, created_at=now)
    db.add(participant)
    db.flush()
    return participant


def invite_of(db: Session, user_id: int) -> CrowdInvite | None:
    """The crowd link a participant's account belongs to; None for everybody else."""
    return db.scalar(select(CrowdInvite).join(CrowdParticipant, CrowdParticipant.invite_id == CrowdInvite.id)
                     .where(CrowdParticipant.user_id == user_id))


def close_crowd_invite(db: Session, invite_id: int, now: datetime) -> CrowdInvite:
    invite = db.get(CrowdInvite, invite_id)
    if invite is None:
        raise NotFound(f"no crowd link {invite_id}")
    if invite.closed_at is None:
        invite.closed_at = now
    return invite


def list_crowd_invites(db: Session, only_id: int | None = None) -> list[CrowdInviteInfo]:
    """Every crowd link (or only the one with id only_id), newest first, with its participants, how
    many finished, and their judgements."""
    judged = (select(CrowdParticipant.invite_id, func.count(Assignment.id).label("done"))
              .outerjoin(Assignment, (Assignment.user_id == CrowdParticipant.user_id)
                         & Assignment.status.in_(("submitted", "surplus")))
              .group_by(CrowdParticipant.id, CrowdParticipant.invite_id))
    invites = select(CrowdInvite).order_by(CrowdInvite.id.desc())
    if only_id is not None:
        judged = judged.where(CrowdParticipant.invite_id == only_id)
        invites = invites.where(CrowdInvite.id == only_id)
    per_participant: dict[int, list[int]] = {}
    for invite_id, done in db.execute(judged):
        per_participant.setdefault(invite_id, []).append(done)
    infos = []
    for invite in db.scalars(invites):
        done = per_participant.get(invite.id, [])
        infos.append(CrowdInviteInfo(
            id=invite.id, token=invite.token, name=invite.name, platform=invite.platform, task_quota=invite.task_quota,
            session_minutes=invite.session_minutes, max_participants=invite.max_participants,
            completion_code=invite.completion_code,
            completion_url=invite.completion_url, created_at=invite.created_at, closed_at=invite.closed_at,
            link=link_template(invite), participants=len(done), finished=sum(1 for d in done if d >= invite.task_quota), judgements=sum(done)))
    return infos


class ParticipantRow(BaseModel):
    """One participant of a crowd link, for the admin's Crowd page."""

    participant_id: str
    username: str
    started_at: datetime
    judgements: int
    quota_done: bool
    visits: int
    last_visit_at: datetime | None


PARTICIPANT_ROWS = 200  # per link on the Crowd page, newest first


def list_participants(db: Session, invite_id: int, limit: int = PARTICIPANT_ROWS) -> list[ParticipantRow]:
    """A link's newest participants with their judgements (submitted or surplus) and visits."""
    done = (select(Assignment.user_id, func.count().label("n"))
            .join(CrowdParticipant, CrowdParticipant.user_id == Assignment.user_id)
            .where(CrowdParticipant.invite_id == invite_id, Assignment.status.in_(("submitted", "surplus")))
            .group_by(Assignment.user_id).subquery())
    visits = (select(CrowdVisit.participant_id, func.count().label("n"), func.max(CrowdVisit.created_at).label("last"))
              .join(CrowdParticipant, CrowdParticipant.id == CrowdVisit.participant_id)
              .where(CrowdParticipant.invite_id == invite_id).group_by(CrowdVisit.participant_id).subquery())
    rows = db.execute(
        select(CrowdParticipant.participant_id, User.username, CrowdParticipant.created_at, User.task_quota,
               func.coalesce(done.c.n, 0), func.coalesce(visits.c.n, 0), visits.c.last)
        .join(User, User.id == CrowdParticipant.user_id)
        .outerjoin(done, done.c.user_id == CrowdParticipant.user_id)
        .outerjoin(visits, visits.c.participant_id == CrowdParticipant.id)
        .where(CrowdParticipant.invite_id == invite_id).order_by(CrowdParticipant.id.desc()).limit(limit))
    return [ParticipantRow(participant_id=pid, username=username, started_at=started, judgements=judged,
                           quota_done=quota is not None and judged >= quota, visits=n_visits, last_visit_at=last)
            for pid, username, started, quota, judged, n_visits, last in rows]


def link_template(invite: CrowdInvite, base_url: str = "") -> str:
    """The link to paste into the platform, with its placeholders for the ids: Prolific fills in
    {{%PROLIFIC_PID%}} and the others; on MTurk the HIT's page puts the worker's ids in (this site
    refuses to be framed, so the HIT opens the link in a tab of its own)."""
    names = PLATFORM_PARAMS[invite.platform]
    if invite.platform == "prolific":
        query = "&".join(f"{name}={{{{%{name}%}}}}" for name in names)
    else:
        query = "workerId=WORKER_ID&hitId=HIT_ID&assignmentId=ASSIGNMENT_ID"
    return f"{base_url.rstrip('/')}/join/{invite.token}?{query}"
