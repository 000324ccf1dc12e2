# Type stubs for the parts of systemd-python (https://github.com/systemd/python-systemd) that sjob uses.
