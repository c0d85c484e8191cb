"""sipcore: the SIP stack. Its pure, sans-IO core is :mod:`sipcore.sip`."""
