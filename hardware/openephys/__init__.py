"""Open Ephys GUI I/O: its ZMQ Interface and Event Broadcaster formats, its HTTP remote control, the map.

The modules here speak Open Ephys's own formats (open-ephys.github.io/gui-docs, "ZMQ Interface",
"Event Broadcaster", "Remote control") and know nothing of rigd's service; ``rig/openephys_rig.py``
is the rig process that joins them to rigd's wire protocol (docs/openephys.md).
"""
