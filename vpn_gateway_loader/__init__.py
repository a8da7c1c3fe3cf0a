"""Entry point for Salt's loader: where the pack's custom modules live.

``pip install .`` registers these functions under the ``salt.loader`` entry
point group, so a minion finds the modules without ``saltutil.sync_all``.
"""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def module_dirs():
    return [os.path.join(_HERE, "_modules")]


def states_dirs():
    return [os.path.join(_HERE, "_states")]


def beacons_dirs():
    return [os.path.join(_HERE, "_beacons")]
