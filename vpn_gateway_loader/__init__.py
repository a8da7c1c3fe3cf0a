"""The pack as a Salt extension: ``pip install .`` registers this package under
the ``salt.loader`` entry point (setup.cfg), in the salt-extension template's
form, and Salt's loader takes its sub-packages by kind: ``modules``,
``states``, ``beacons`` (installed from salt/_modules, salt/_states,
salt/_beacons). A minion then finds the modules without ``saltutil.sync_all``.
"""
