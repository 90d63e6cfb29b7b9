"""The agent's enrolment state machine, driven by a task.Clock and a recording `send`."""

import pytest
from twisted.internet.task import Clock

from medulla_agent.enrolment import (
    ANSWER_TIMEOUT,
    ASSESSING,
    IDLE,
    REFUSED_RETRY,
    REGISTERED,
    REGISTERING,
    Enrolment,
)

ASSESS, REGISTER = "result.agent.assess", "result.agent.register"


class Agent:
    """An Enrolment with everything it calls recorded, and `sent` as (time, action)."""

    def __init__(self, rand=lambda: 0.5, leaves=False):
        self.clock = Clock()
        self.sent, self.assessments, self.registrations = [], [], []
        self.leaves = leaves
        self.enrolment = Enrolment(self.clock, self._send, self._assessed, self._registered,
                                   rand=rand)

    def _send(self, action):
        self.sent.append((self.clock.seconds(), action))

    def _assessed(self, data):
        self.assessments.append(data)
        return self.leaves

    def _registered(self, data):
        self.registrations.append(data)

    def actions(self):
        return [a for _, a in self.sent]

    def to_registering(self):
        self.enrolment.session_started()
        self.enrolment.result(ASSESS, 0, {"relay": "master", "server": None, "port": None})
        assert self.enrolment.state == REGISTERING
        self.sent.clear()


@pytest.fixture
def agent():
    return Agent()


def test_session_start_asks_the_assessor(agent):
    agent.enrolment.session_started()
    assert agent.actions() == ["agent.assess"]
    assert agent.enrolment.state == ASSESSING


def test_assessment_to_stay_leads_to_registration(agent):
    agent.enrolment.session_started()
    data = {"relay": "master", "server": None, "port": None}
    agent.enrolment.result(ASSESS, 0, data)
    assert agent.assessments == [data]
    assert agent.actions() == ["agent.assess", "agent.register"]
    assert agent.enrolment.state == REGISTERING


def test_registration_accepted_ends_enrolment(agent):
    agent.to_registering()
    answer = {"uuid": "m-1", "hostname": "pc01", "relay": "master"}
    agent.enrolment.result(REGISTER, 0, answer)
    assert agent.enrolment.state == REGISTERED
    assert agent.registrations == [answer]
    assert agent.clock.getDelayedCalls() == []
    agent.clock.advance(3600)
    assert agent.sent == []


def test_assessment_sending_the_agent_elsewhere_stops_here():
    agent = Agent(leaves=True)
    agent.enrolment.session_started()
    agent.enrolment.result(ASSESS, 0, {"relay": "lyon", "server": "relay.lyon", "port": 5222})
    assert agent.enrolment.state == IDLE
    assert agent.actions() == ["agent.assess"]
    assert agent.clock.getDelayedCalls() == []


def test_no_answer_resends_after_a_timeout_that_grows(agent):
    agent.enrolment.session_started()
    agent.clock.advance(ANSWER_TIMEOUT - 0.01)
    assert len(agent.sent) == 1
    for _ in range(9):
        agent.clock.advance(agent.clock.getDelayedCalls()[0].getTime() - agent.clock.seconds())
    times = [t for t, _ in agent.sent]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # rand 0.5: no jitter; 20 s, then 40, 60... up to a cap of 120 s.
    assert gaps == [20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 120.0, 120.0, 120.0]
    assert set(agent.actions()) == {"agent.assess"}
    assert agent.enrolment.state == ASSESSING


@pytest.mark.parametrize("rand, first_gap", [(lambda: 0.0, 15.0), (lambda: 0.999, 24.99)])
def test_resend_timeout_is_jittered_within_a_quarter(rand, first_gap):
    agent = Agent(rand=rand)
    agent.enrolment.session_started()
    (call,) = agent.clock.getDelayedCalls()
    assert call.getTime() == pytest.approx(first_gap)


def test_unanswered_registration_is_resent(agent):
    agent.to_registering()
    agent.clock.advance(60)
    assert agent.actions() == ["agent.register"]
    assert agent.enrolment.state == REGISTERING


def test_busy_master_is_obeyed_exactly_and_not_hurried(agent):
    agent.to_registering()
    agent.enrolment.result(REGISTER, 429, {"error": "busy", "retry_after": 7.5})
    agent.clock.advance(7.499)
    agent.enrolment.master_available()        # the master coming back must not hurry us
    assert agent.sent == []
    agent.clock.advance(0.001)
    assert agent.sent == [(agent.clock.seconds(), "agent.register")]
    assert agent.enrolment.state == REGISTERING


def test_after_the_wait_a_master_coming_back_may_hurry_the_request(agent):
    agent.to_registering()
    agent.enrolment.master_available()
    assert agent.actions() == ["agent.register"]   # a pending request need not wait
    agent.enrolment.result(REGISTER, 429, {"retry_after": 3})
    agent.clock.advance(3)
    agent.enrolment.master_available()
    assert agent.actions() == ["agent.register"] * 3


@pytest.mark.parametrize("data", [
    {}, {"retry_after": 0}, {"retry_after": -5}, {"retry_after": 3600}, {"retry_after": "9"},
    {"retry_after": None}, {"retry_after": [5]},
])
def test_busy_without_a_usable_retry_after_backs_off_long(data):
    agent = Agent(rand=lambda: 0.0)
    agent.to_registering()
    agent.enrolment.result(REGISTER, 429, data)
    agent.clock.advance(REFUSED_RETRY / 2 - 0.01)
    assert agent.sent == []
    agent.clock.advance(0.01)
    assert agent.actions() == ["agent.register"]


@pytest.mark.parametrize("rand, delay", [(lambda: 0.0, 150.0), (lambda: 0.999, 299.85)])
def test_other_refusals_back_off_for_minutes(rand, delay):
    agent = Agent(rand=rand)
    agent.to_registering()
    agent.enrolment.result(REGISTER, 409, {"error": "key-mismatch", "message": "reset it"})
    (call,) = agent.clock.getDelayedCalls()
    assert call.getTime() - agent.clock.seconds() == pytest.approx(delay)
    agent.enrolment.master_available()
    assert agent.sent == []
    agent.clock.advance(delay)
    assert agent.actions() == ["agent.register"]


def test_refused_assessment_is_asked_again_later():
    agent = Agent(rand=lambda: 0.0)
    agent.enrolment.session_started()
    agent.enrolment.result(ASSESS, 401, {"error": "bad-enrolment-key", "message": "no"})
    assert agent.enrolment.state == ASSESSING
    agent.clock.advance(149)
    assert agent.actions() == ["agent.assess"]
    agent.clock.advance(1)
    assert agent.actions() == ["agent.assess", "agent.assess"]


@pytest.mark.parametrize("step", ["assessing", "registering", "held", "registered"])
def test_session_end_cancels_every_timer(agent, step):
    agent.enrolment.session_started()
    if step != "assessing":
        agent.enrolment.result(ASSESS, 0, {})
    if step == "held":
        agent.enrolment.result(REGISTER, 429, {"retry_after": 30})
    if step == "registered":
        agent.enrolment.result(REGISTER, 0, {"uuid": "m-1"})
    agent.sent.clear()
    agent.enrolment.session_ended()
    assert agent.enrolment.state == IDLE
    assert agent.clock.getDelayedCalls() == []
    agent.clock.advance(3600)
    agent.enrolment.master_available()
    assert agent.sent == []


def test_a_new_session_starts_over_with_short_timeouts(agent):
    agent.enrolment.session_started()
    agent.clock.advance(20 + 40 + 60)
    agent.enrolment.session_ended()
    agent.enrolment.session_started()
    (call,) = agent.clock.getDelayedCalls()
    assert call.getTime() - agent.clock.seconds() == ANSWER_TIMEOUT


def test_results_for_another_state_are_ignored(agent):
    agent.enrolment.result(ASSESS, 0, {})           # idle: nothing asked
    agent.enrolment.result(REGISTER, 0, {})
    assert agent.enrolment.state == IDLE and agent.sent == []

    agent.enrolment.session_started()
    agent.enrolment.result(REGISTER, 0, {"uuid": "forged"})
    assert agent.enrolment.state == ASSESSING and agent.registrations == []
    assert len(agent.clock.getDelayedCalls()) == 1  # still waiting for the assessment

    agent.enrolment.result(ASSESS, 0, {})
    agent.enrolment.result(ASSESS, 0, {})           # a late duplicate
    assert agent.assessments == [{}]
    assert agent.actions() == ["agent.assess", "agent.register"]

    agent.enrolment.result("result.deploy.start", 0, {})
    agent.enrolment.result(REGISTER, 0, {"uuid": "m-1"})
    agent.enrolment.result(REGISTER, 429, {"retry_after": 5})  # after success: ignored
    assert agent.enrolment.state == REGISTERED
    assert agent.registrations == [{"uuid": "m-1"}]
    assert agent.clock.getDelayedCalls() == []
