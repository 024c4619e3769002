"""Outbound webhooks: subscriptions to the outbox's events, signed per the Standard Webhooks
specification and delivered at least once.

- `subscriptions`: the `/webhooks` resource; the URL check at write (the network guard) and the
  signing secret, sealed by the vault and shown once.
- `signing`: the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.
- `dispatch`: outbox events fanned out into deliveries, and a delivery workflow started for each.
- `delivery`: one attempt of a delivery (the POST, re-checked by the guard on the resolved
  address and sent to that address), giving up, and the test event.

The workflows that drive them are in workflows/webhooks.py, on the system worker.
"""
