"""rigd: the service that wires rigs, decoders, controllers, the light interlock and the recorder.

Importing this package imports nothing else, so a lab rig can use ``rig.wire`` and ``rig.client``
with only pyzmq and numpy installed.
"""
