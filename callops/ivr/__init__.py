"""The IVR: Twilio voice webhooks driving a pure call-state machine whose state lives in Redis.

``machine`` (pure FSM) · ``prompts`` (what callers hear) · ``schema`` (the stored JSON)
· ``store`` (Redis) · ``service`` (one function per webhook) · ``twiml`` · ``signature`` · ``views``.
"""
