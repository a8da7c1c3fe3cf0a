"""States around the recovery ladder (salt/_modules/libreswan_recovery.py).

Shares the virtual name ``libreswan`` with ``libreswan.py`` (Salt merges the
functions of both files). The role takes the host's recovery lock in its
first state and lets it go in its last, so that no recovery ladder restarts
pluto or flushes xfrm in the middle of a state run (the protocol: the
module's docstring, docs/monitoring.md):

.. code-block:: yaml

    vpn_gateway_recovery_lock:
      libreswan.recovery_lock:
        - timeout: 300
        - order: first
        - failhard: True
    vpn_gateway_recovery_lock_released:
      libreswan.recovery_lock_released:
        - order: last

Neither changes the host: both report no changes, with or without test=True.
"""

__virtualname__ = "libreswan"


def __virtual__():
    if "libreswan.hold_recovery_lock" in __salt__:
        return __virtualname__
    return (False, "libreswan recovery states: salt/_modules/libreswan_recovery.py is not "
                   "loaded (run saltutil.sync_all)")


def recovery_lock(name, timeout=300):
    """
    Wait up to ``timeout`` seconds for the host's recovery lock (while a
    recovery ladder runs) and hold it for the rest of this state run. Fails
    when the lock stays busy: with ``failhard`` the run stops before its
    first change. test=True only says whether a ladder holds it now.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    if __opts__["test"]:
        ret["comment"] = ("the recovery lock would be held for the rest of the run "
                          "(waiting for a recovery ladder that holds it)")
        return ret
    held = __salt__["libreswan.hold_recovery_lock"](timeout=timeout)
    if not held["held"]:
        ret.update(result=False, comment=f"the recovery lock stayed busy for {timeout}s "
                                         "(a recovery ladder is running): nothing applied")
        return ret
    ret["comment"] = (f"recovery lock held since {held['acquired']:.3f} "
                      f"(waited {held['waited']:.1f}s)")
    return ret


def recovery_lock_released(name):
    """
    Let go of the recovery lock ``recovery_lock`` took (the end of the job's
    process would too).
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    if __opts__["test"]:
        ret["comment"] = "the recovery lock would be released"
        return ret
    done = __salt__["libreswan.release_recovery_lock"]()
    ret["comment"] = (f"recovery lock released at {done['time']:.3f} "
                      f"(held {done['held_for']:.1f}s)" if done["released"]
                      else "the recovery lock was not held by this run")
    return ret
