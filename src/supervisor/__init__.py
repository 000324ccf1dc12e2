"""sjob: a systemd-integrated job supervisor.

Kept empty on purpose: the in-unit shim and the CLI import submodules of this package and must start fast.
"""

__version__ = "0.1.0"
