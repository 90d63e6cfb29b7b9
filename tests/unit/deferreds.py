"""Reading Deferreds that have already fired, in tests without a running reactor."""

from twisted.python.failure import Failure


def result_of(d):
    """The result of ``d``, which must have fired; its failure is raised."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure_of(d):
    """The exception ``d`` failed with; an assertion error if it did not fail."""
    out = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), "expected a failed Deferred, got %r" % out
    return out[0].value
