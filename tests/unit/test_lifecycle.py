"""lifecycle: the replica state machine, table-tested on a fake clock (numbers, no sleeps).

Each case is a script of (now, event) pairs fed to :func:`step` from a fresh state; the test
checks the phase and the effects after the last one (and, for some, along the way).
"""

from __future__ import annotations

import pytest

from supervisor.decide.lifecycle import (
    Abandon, Adopted, Arm, Cancel, DependenciesChanged, Emit, Exited, Fired, LiveProbe, Policy, Promote, Ready,
    ReplicaState, Rollback, Spawn, SpawnFailed, Spawned, Start, Stop, StopProcess, Stopped, Timer, proven, step,
    Good, Note, PROBATION, crash_reason, served_well,
)
from supervisor.desired.model import Backoff, Exit, Phase, RestartPolicy, StartLimit

CRASH = Exit(code=1)
OK = Exit(code=0)
POLICY = Policy(name="api", backoff=Backoff(initial=1, max=8), start_limit=StartLimit(burst=3, interval=60))


def run(script, policy: Policy = POLICY, state: ReplicaState | None = None):
    """Feed ``script`` ([(now, event), ...]); return the final state and every step's effects."""
    state = state or ReplicaState(index=0)
    history = []
    for now, event in script:
        state, effects = step(policy, state, event, now)
        history.append(effects)
    return state, history


def kinds(effects) -> list[str]:
    return [type(e).__name__ + (f":{e.type.value}" if isinstance(e, Emit) else "") for e in effects]


def up(pid: int = 100, at: float = 0.0):
    """A start and its spawn at ``at``."""
    return [(at, Start("planned")), (at, Spawned(pid, at=1e9 + at))]


# -- starting ------------------------------------------------------------------------------

def test_a_start_spawns_then_runs():
    state, history = run(up())
    assert history[0] == [Spawn("planned")]
    assert state.phase is Phase.RUNNING and state.pid == 100 and state.ready
    assert kinds(history[1]) == ["Note", "Emit:started", "Arm"]  # the good_after timer
    assert history[1][-1] == Arm(Timer.GOOD, PROBATION)


def test_a_ready_check_makes_it_wait_for_ready():
    policy = Policy(name="api", has_ready=True, ready_deadline=5)
    state, _ = run(up(), policy)
    assert state.phase is Phase.RUNNING and not state.ready
    state, history = run([(1.0, Ready())], policy, state)
    assert state.phase is Phase.READY and state.ready and kinds(history[0]) == ["Emit:ready", "Good"]
    assert state.good  # with a ready check, good_after defaults to 0: good once ready


def test_waits_on_dependencies_then_starts():
    state, history = run([(0.0, Start("planned", waiting="db (ready)")),
                          (1.0, DependenciesChanged("db (ready)")),
                          (2.0, DependenciesChanged(""))])
    assert history[0] == [] and history[1] == []
    assert history[2] == [Spawn("planned")]
    assert state.phase is Phase.STARTING and state.starts == (2.0,)


def test_waiting_says_what_for():
    state, _ = run([(0.0, Start("planned", waiting="db (ready)"))])
    assert state.phase is Phase.PENDING and state.message == "waiting for db (ready)"


def test_a_dependency_change_after_the_start_is_ignored():
    state, history = run([*up(), (1.0, DependenciesChanged(""))])
    assert history[-1] == [] and state.phase is Phase.RUNNING


# -- crashes, backoff, start limit -----------------------------------------------------------

CRASH_CASES = [
    # (name, restart policy, exit, expected phase)
    ("always restarts a clean exit", RestartPolicy.ALWAYS, OK, Phase.BACKOFF),
    ("always restarts a crash", RestartPolicy.ALWAYS, CRASH, Phase.BACKOFF),
    ("on-failure leaves a clean exit", RestartPolicy.ON_FAILURE, OK, Phase.EXITED),
    ("on-failure restarts a crash", RestartPolicy.ON_FAILURE, CRASH, Phase.BACKOFF),
    # systemd counts an unclean or unknown result as a failure: an adopted replica's exit
    # status cannot be known (not our child), and one that crashed must come back
    ("on-failure restarts an unknown exit (adopted)", RestartPolicy.ON_FAILURE, Exit(), Phase.BACKOFF),
    ("never leaves an unknown exit", RestartPolicy.NEVER, Exit(), Phase.EXITED),
    ("never leaves a crash", RestartPolicy.NEVER, CRASH, Phase.EXITED),
]


@pytest.mark.parametrize(("policy", "exit", "phase"), [c[1:] for c in CRASH_CASES], ids=[c[0] for c in CRASH_CASES])
def test_restart_policy(policy, exit, phase):
    state, _ = run([*up(), (5.0, Exited(exit))], Policy(name="api", restart=policy))
    assert state.phase is phase and state.last_exit == exit and state.pid is None


def test_first_crash_restarts_at_once_then_backs_off():
    script = [*up(), (0.5, Exited(CRASH)), (0.5, Fired(Timer.BACKOFF)), (0.5, Spawned(101, at=0)),
              (0.6, Exited(CRASH))]
    state, history = run(script)
    assert Arm(Timer.BACKOFF, 0.0) in history[2]
    assert history[3] == [Spawn("exited (status 1): restart = always, backoff 0s")]
    assert Note("started api[0] pid 101: exited (status 1): restart = always, backoff 0s") in history[4]
    assert Arm(Timer.BACKOFF, 1.0) in history[5]
    assert state.phase is Phase.BACKOFF and state.restarts == 2 and state.message == "restart in 1.00s after exit 1"


@pytest.mark.parametrize(("restart", "exit", "delay", "reason"), [
    (RestartPolicy.ON_FAILURE, Exit(code=1), 2.0, "exited (status 1): restart = on-failure, backoff 2s"),
    (RestartPolicy.ALWAYS, Exit(signal=9), 0.25, "exited (signal 9 (SIGKILL)): restart = always, backoff 0.25s"),
    (RestartPolicy.ON_FAILURE, Exit(), 0.0, "exited (unknown): restart = on-failure, backoff 0s"),
])
def test_a_crash_restart_says_why(restart, exit, delay, reason):
    assert crash_reason(Policy(name="api", restart=restart), exit, delay) == reason


def test_only_restarts_after_an_exit_count():
    """RESTARTS is systemd's NRestarts: automatic restarts after an exit, not the plan's starts."""
    state, _ = run([*up(), (0.5, Start("new revision a -> b")), (0.5, Spawned(101, at=0))])
    assert state.restarts == 0
    state, _ = run([*up(), (0.5, Exited(CRASH)), (0.5, Fired(Timer.BACKOFF)), (0.5, Spawned(101, at=0))])
    assert state.restarts == 1 and state.reason.startswith("exited (status 1)")


def test_jitter_comes_from_the_event():
    script = [*up(), (0.1, Exited(CRASH)), (0.1, Fired(Timer.BACKOFF)), (0.1, Spawned(101, at=0)),
              (0.2, Exited(CRASH, jitter=1.0))]
    _, history = run(script)
    assert Arm(Timer.BACKOFF, 1.2) in history[-1]


def test_a_long_run_resets_the_backoff():
    script = [*up(), (0.1, Exited(CRASH)), (0.1, Fired(Timer.BACKOFF)), (0.1, Spawned(101, at=0)),
              (100.0, Exited(CRASH))]
    _, history = run(script)
    assert Arm(Timer.BACKOFF, 0.0) in history[-1]


def test_start_limit_fails_the_replica():
    script = list(up())
    for pid, now in ((101, 0.01), (102, 0.02)):  # burst = 3: the planned start and two restarts fit
        script += [(now, Exited(CRASH)), (now, Fired(Timer.BACKOFF)), (now, Spawned(pid, at=0))]
    script += [(0.03, Exited(CRASH)), (5.0, Fired(Timer.BACKOFF))]
    state, history = run(script)
    assert state.phase is Phase.FAILED and state.pid is None
    assert state.message == "start limit hit: 3 starts in 60s"
    assert kinds(history[-2])[-2:] == ["Note", "Emit:failed"]
    assert history[-1] == []  # a late timer does not start a failed replica


def test_starts_outside_the_interval_are_forgotten():
    policy = Policy(name="api", backoff=Backoff(initial=0, max=0), start_limit=StartLimit(burst=2, interval=10))
    script = list(up())
    for i, now in enumerate((20.0, 40.0, 60.0, 80.0)):
        script += [(now, Exited(CRASH)), (now, Fired(Timer.BACKOFF)), (now, Spawned(200 + i, at=0))]
    state, _ = run(script, policy)
    assert state.phase is Phase.RUNNING and state.restarts == 4


def test_a_failed_spawn_is_a_crash_with_its_cause():
    state, history = run([(0.0, Start("planned")), (0.0, SpawnFailed("no such command: nope"))])
    assert kinds(history[1])[:2] == ["Note", "Emit:start-failed"]
    # its last exit is what a shell gives a command that cannot run: 127 (run once exits with it)
    assert state.phase is Phase.BACKOFF and state.last_exit == Exit(code=127)
    assert state.message == "restart in 0.00s after exit 127: no such command: nope"
    state, _ = run([(0.0, Start("planned")), (0.0, SpawnFailed("permission denied", 126))])
    assert state.last_exit == Exit(code=126)


def test_a_late_backoff_timer_does_nothing():
    state, history = run([*up(), (1.0, Fired(Timer.BACKOFF))])
    assert history[-1] == [] and state.phase is Phase.RUNNING


# -- probation and rollback -------------------------------------------------------------------

def test_three_crashes_on_probation_roll_back():
    script = [(0.0, Start("update", probation=True)), (0.0, Spawned(100, at=0))]
    for pid, now in ((101, 0.1), (102, 0.2)):
        script += [(now, Exited(CRASH)), (now, Fired(Timer.BACKOFF)), (now, Spawned(pid, at=0))]
    script.append((0.3, Exited(CRASH)))
    state, history = run(script)
    assert history[0][0] == Arm(Timer.PROBATION, 10.0)
    assert history[-1][-2:] == [Cancel(Timer.PROBATION), Rollback("crashed 3 times (exit 1)")]
    assert not state.probation


def test_probation_passes_when_up_at_the_end():
    state, history = run([(0.0, Start("update", probation=True)), (0.0, Spawned(100, at=0)),
                          (10.0, Fired(Timer.PROBATION))])
    assert history[1][-1] != Arm(Timer.GOOD, PROBATION)  # on probation, the deadline judges it
    assert history[-1] == [Good()] and not state.probation and state.good
    assert proven(POLICY, state, 10.0)


def test_probation_rolls_back_a_replica_that_is_not_up():
    policy = Policy(name="api", restart=RestartPolicy.NEVER)
    _, history = run([(0.0, Start("update", probation=True)), (0.0, Spawned(100, at=0)),
                      (1.0, Exited(CRASH)), (10.0, Fired(Timer.PROBATION))], policy)
    assert history[-1] == [Rollback("not running 10s after the update (exited)")]


def test_probation_rolls_back_a_replica_never_ready():
    policy = Policy(name="api", has_ready=True, ready_deadline=7)
    _, history = run([(0.0, Start("update", probation=True)), (0.0, Spawned(100, at=0)),
                      (7.0, Fired(Timer.PROBATION))], policy)
    assert history[0][0] == Arm(Timer.PROBATION, 7)
    assert history[-1] == [Rollback("never became ready within 7s")]


def test_proven_needs_the_probation_time_or_ready():
    state, _ = run(up())
    assert not proven(POLICY, state, 9.9)
    state, _ = run([(10.0, Fired(Timer.GOOD))], POLICY, state)
    assert proven(POLICY, state, 10.0)
    policy = Policy(name="api", has_ready=True)
    state, _ = run(up(), policy)
    assert not proven(policy, state, 100.0)
    state, _ = run([(1.0, Ready())], policy, state)
    assert proven(policy, state, 1.0)


# -- start-first ----------------------------------------------------------------------------

def test_start_first_promotes_after_the_grace_without_a_ready_check():
    _, history = run([(0.0, Start("update", trial=True)), (0.0, Spawned(100, at=0)), (1.0, Fired(Timer.TRIAL))])
    assert Arm(Timer.TRIAL, 1.0) in history[1]
    assert history[-1] == [Promote()]


def test_start_first_promotes_when_ready():
    policy = Policy(name="api", has_ready=True, ready_deadline=5)
    _, history = run([(0.0, Start("update", trial=True)), (0.0, Spawned(100, at=0)), (0.2, Ready())], policy)
    assert history[-1][-3:] == [Cancel(Timer.TRIAL), Promote(), Good()]


def test_start_first_abandons_a_candidate_never_ready():
    policy = Policy(name="api", has_ready=True, ready_deadline=5)
    _, history = run([(0.0, Start("update", trial=True)), (0.0, Spawned(100, at=0)), (5.0, Fired(Timer.TRIAL))],
                     policy)
    assert history[-1] == [Abandon("never became ready within 5s")]


def test_start_first_abandons_a_candidate_that_exits():
    state, history = run([(0.0, Start("update", trial=True)), (0.0, Spawned(100, at=0)), (0.5, Exited(CRASH))])
    assert history[-1][-1] == Abandon("exited during start-up (exit 1)")
    assert not any(isinstance(e, Arm) for e in history[-1])  # no restart of a candidate


def test_start_first_abandons_a_candidate_that_cannot_start():
    _, history = run([(0.0, Start("update", trial=True)), (0.0, SpawnFailed("permission denied"))])
    assert history[-1][-1] == Abandon("could not start: permission denied")


FOREIGN = "port 8661 is answered by pid 7 (another replica of the service), not by pid 100 or its children"
TRIAL_READY = Policy(name="api", has_ready=True, ready_deadline=5)


def test_a_check_passed_for_a_process_already_gone_is_not_ready_and_its_exit_abandons():
    """A candidate whose check passes after its process is gone (the old replica answered) is
    a failed start: never ready, never promoted."""
    state, history = run([(0.0, Start("update", trial=True)), (0.0, Spawned(100, at=0)), (0.1, Ready(alive=False)),
                          (0.1, Exited(CRASH))], TRIAL_READY)
    assert history[2] == [] and not state.ready
    assert history[-1][-1] == Abandon("exited during start-up (exit 1)")
    assert not any(isinstance(e, Promote) for effects in history for e in effects)


def test_a_check_answered_by_another_process_is_not_ready_and_the_reason_says_who():
    script = [(0.0, Start("update", trial=True)), (0.0, Spawned(100, at=0)), (0.2, Ready(foreign=FOREIGN)),
              (0.4, Ready(foreign=FOREIGN))]
    state, history = run(script, TRIAL_READY)
    assert not state.ready and state.phase is Phase.RUNNING and state.message == FOREIGN
    assert kinds(history[2]) == ["Note"] and history[3] == []  # said once
    _, exited = run([(0.6, Exited(CRASH))], TRIAL_READY, state)
    assert exited[-1][-1] == Abandon(f"exited during start-up (exit 1; {FOREIGN})")
    _, never = run([(5.0, Fired(Timer.TRIAL))], TRIAL_READY, state)
    assert never[-1] == [Abandon(f"never became ready within 5s ({FOREIGN})")]
    # its own answer later: ready and promoted
    state, history = run([(0.8, Ready())], TRIAL_READY, state)
    assert state.ready and state.message == "" and Promote() in history[-1]


# -- liveness --------------------------------------------------------------------------------

def test_liveness_restarts_after_retries_failures_in_a_row():
    policy = Policy(name="api", live_retries=3, stop_signal=15, stop_timeout=4)
    script = [*up(), (1, LiveProbe(False)), (2, LiveProbe(False)), (3, LiveProbe(True)),
              (4, LiveProbe(False)), (5, LiveProbe(False)), (6, LiveProbe(False))]
    state, history = run(script, policy)
    assert all(h == [] for h in history[2:-1])
    assert kinds(history[-1]) == ["Note", "Emit:restarting", "StopProcess"]
    assert history[-1][-1] == StopProcess(15, 4)
    # the exit that follows is a crash: backoff, not a stop
    state, history = run([(6.5, Exited(Exit(signal=15)))], policy, state)
    assert state.phase is Phase.BACKOFF


# -- stopping --------------------------------------------------------------------------------

def test_stop_signals_then_the_exit_is_not_a_crash():
    policy = Policy(name="api", stop_signal=2, stop_timeout=3)
    state, history = run([*up(), (1.0, Stop("removed", alive=True)), (1.1, Exited(Exit(signal=2))),
                          (1.2, Stopped(Exit(signal=2)))], policy)
    assert history[2][-1] == StopProcess(2, 3)
    assert Cancel(Timer.BACKOFF) in history[2]
    assert history[3] == []
    assert kinds(history[4]) == ["Emit:stopped", "Note"]
    assert state.phase is Phase.STOPPED and state.pid is None and not state.stopping


def test_stop_of_a_replica_in_backoff_cancels_its_restart():
    state, history = run([*up(), (1.0, Exited(CRASH)), (1.0, Stop("held", alive=False)),
                          (2.0, Fired(Timer.BACKOFF))])
    assert Cancel(Timer.BACKOFF) in history[3] and history[4] == []
    assert state.phase is Phase.STOPPED


def test_stop_cancels_probation():
    state, history = run([(0.0, Start("update", probation=True)), (0.0, Spawned(100, at=0)),
                          (1.0, Stop("held", alive=True)), (1.1, Stopped(OK)), (10.0, Fired(Timer.PROBATION))])
    assert history[-1] == [] and state.phase is Phase.STOPPED


def test_adopted_replica_runs_and_restarts_on_exit():
    state, _ = run([(0.0, Adopted(pid=42, started_at=5.0, restarts=2, stale=True))])
    assert state.phase is Phase.RUNNING and state.stale and state.restarts == 2
    state, _ = run([(100.0, Exited(Exit()))], POLICY, state)
    assert state.phase is Phase.BACKOFF and state.restarts == 3


# -- the rule of a good version (issue 12, item 3) ------------------------------------------

def _update_after(uptime: float, policy: Policy = POLICY) -> bool:
    """Version A starts at 0 and its GOOD timer fires when due; a new version replaces it at
    ``uptime`` s. True when A counts as good then: what a crash-looping new version rolls back to."""
    state, history = run(up(), policy)
    due = next((e.delay for e in history[1] if isinstance(e, Arm) and e.timer is Timer.GOOD), None)
    if due is not None and due <= uptime:
        state, _ = run([(due, Fired(Timer.GOOD))], policy, state)
    return proven(policy, state, uptime)


def test_a_bad_commit_5s_after_start_is_not_rolled_back_by_default_but_16s_after_is():
    """The issue's case, made a written rule: good once up good_after (default 10 s) without a
    crash. At 5 s version A has not proven itself, so there is nothing good to go back to."""
    assert not _update_after(5.0)
    assert _update_after(16.0)
    assert POLICY.describe_good() == "up for 10s without a crash"


def test_good_after_is_configurable():
    quick = Policy(name="api", good_after=3.0)
    assert _update_after(5.0, quick)
    slow = Policy(name="api", good_after=30.0)
    assert not _update_after(16.0, slow)
    immediate = Policy(name="api", good_after=0.0)
    state, history = run(up(), immediate)
    assert Good() in history[1] and state.good


def test_with_a_ready_check_good_after_counts_from_ready():
    policy = Policy(name="api", has_ready=True, ready_deadline=5, good_after=4.0)
    state, history = run(up() + [(1.0, Ready())], policy)
    assert history[-1][-1] == Arm(Timer.GOOD, 4.0) and not state.good
    assert policy.describe_good() == "ready for 4s without a crash"
    assert policy.probation_deadline == 9.0


def test_a_crash_before_good_after_cancels_it():
    state, history = run(up() + [(5.0, Exited(CRASH))])
    assert Cancel(Timer.GOOD) in history[-1] and not state.good
    state, history = run([(10.0, Fired(Timer.GOOD))], POLICY, state)  # a late timer changes nothing
    assert history[-1] == [] and not state.good


def test_a_good_replica_that_restarts_must_prove_itself_again():
    state, _ = run(up() + [(10.0, Fired(Timer.GOOD))])
    assert state.good
    state, _ = run([(20.0, Exited(CRASH)), (20.0, Fired(Timer.BACKOFF)), (20.0, Spawned(101, at=0))], POLICY, state)
    assert not state.good and not proven(POLICY, state, 21.0)


def test_ready_then_crashing_on_probation_is_still_rolled_back():
    """With a ready check (good_after 0) a new version on probation is not good at ready: it is
    judged at its deadline, so ready-then-crashing rolls back (the rule before good_after)."""
    policy = Policy(name="api", has_ready=True, ready_deadline=5)
    script = [(0.0, Start("update", probation=True)), (0.0, Spawned(100, at=0)), (0.05, Ready())]
    for pid, now in ((101, 0.1), (102, 0.2)):
        script += [(now, Exited(CRASH)), (now, Fired(Timer.BACKOFF)), (now, Spawned(pid, at=0))]
    script.append((0.3, Exited(CRASH)))
    state, history = run(script, policy)
    assert Good() not in [e for step_ in history for e in step_]
    assert history[-1][-2:] == [Cancel(Timer.PROBATION), Rollback("crashed 3 times (exit 1)")]


def test_a_new_version_must_be_good_by_its_deadline_one_crash_is_enough_to_roll_back():
    """A new version replacing a good one must itself be good by its deadline (ready deadline
    plus good_after): running at the deadline after a crash on the way is not good."""
    script = [(0.0, Start("update", probation=True)), (0.0, Spawned(100, at=0)), (1.0, Exited(CRASH)),
              (1.0, Fired(Timer.BACKOFF)), (1.0, Spawned(101, at=0)), (10.0, Fired(Timer.PROBATION))]
    state, history = run(script)
    assert history[-1] == [Rollback("crashed 1 time within 10s of the update (exit 1)")]
    assert not state.good and not state.probation


SERVED_CASES = [
    # (name, script after a probation start and spawn, now, good_after, served well)
    ("ready 11 s of a 20 s deadline", [(1.0, Ready())], 12.0, None, True),
    ("ready, good_after not reached yet", [(1.0, Ready())], 3.0, 5.0, False),
    ("ready for good_after", [(1.0, Ready())], 6.0, 5.0, True),
    ("never ready", [], 12.0, None, False),
    ("crashed once since the update", [(1.0, Exited(CRASH)), (1.0, Fired(Timer.BACKOFF)),
                                        (1.0, Spawned(101, at=0)), (2.0, Ready())], 12.0, None, False),
]


@pytest.mark.parametrize(("script", "now", "good_after", "expected"), [c[1:] for c in SERVED_CASES],
                         ids=[c[0] for c in SERVED_CASES])
def test_a_version_on_probation_that_served_well_is_good_when_replaced(script, now, good_after, expected):
    """The rule of a good version (good once ready for good_after without a crash) holds for a
    version on probation too when a newer one replaces it before its deadline."""
    policy = Policy(name="api", has_ready=True, ready_deadline=20.0, good_after=good_after)
    state, _ = run([(0.0, Start("update", probation=True)), (0.0, Spawned(100, at=0)), *script], policy)
    assert served_well(policy, state, now) is expected


# -- lazy timers: applied when next looked at, not on the loop -------------------------------

#: A state of every shape a timer can find: running, ready, stopping, in backoff, on trial, on
#: probation, gone; with and without a ready check.
_TIMER_STATES = [
    ReplicaState(index=0, phase=phase, pid=pid, ready=ready, stopping=stopping, trial=trial,
                 probation=probation, good=good, probation_crashes=crashes)
    for phase, pid in [(Phase.RUNNING, 100), (Phase.READY, 100), (Phase.STOPPING, 100), (Phase.BACKOFF, None),
                       (Phase.EXITED, None), (Phase.STARTING, None)]
    for ready in (False, True) for stopping in (False, True) for trial in (False, True)
    for probation in (False, True) for good in (False, True) for crashes in (0, 1)
]
_PROCESS_EFFECTS = (Spawn, StopProcess, Rollback, Promote, Abandon, Arm, Emit)


@pytest.mark.parametrize("timer", list(Timer))
def test_a_timer_is_lazy_exactly_when_its_firing_touches_no_process(timer):
    """A lazy timer (LAZY_TIMERS) is applied by the driver when it next looks at the replica,
    not at its deadline, so an idle supervisor is not woken by one per replica (2,000 good
    timers 10 s after a start burst). That is right only while its firing has no effect but
    :class:`Good` (no spawn, stop, rollback, verdict, event or new timer) in any state; every
    other timer must keep a real deadline because some state gives it one of those."""
    from supervisor.decide.lifecycle import LAZY_TIMERS
    effects = [e for policy in (POLICY, Policy(name="api", has_ready=True, ready_deadline=5))
               for state in _TIMER_STATES for e in step(policy, state, Fired(timer), 50.0)[1]]
    touches = [e for e in effects if isinstance(e, _PROCESS_EFFECTS)]
    if timer in LAZY_TIMERS:
        assert touches == [] and all(isinstance(e, Good) for e in effects), touches[:3]
    else:
        assert touches, f"{timer} never touches a process: it could be lazy"

