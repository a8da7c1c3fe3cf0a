"""The vpn-gateway lab: real hosts (systemd-nspawn containers in network
namespaces) on one machine, a salt-master serving this repo, and helpers for
tests and the demo. See lab/lab.py for the mechanics, lab/topology.py for
the hosts and addresses."""
from .lab import PREFIX, Lab, LabError, LabHost, Result, clean, leftovers  # noqa: F401
from .topology import DEFAULT, Host, Segment, Topology  # noqa: F401
