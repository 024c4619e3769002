"""Dev-only tooling: the `controlplane dev` stack (stack.py) and the fake Anthropic server
(fake_anthropic.py). Nothing in the API or the worker imports this package; the servers it
shares with the test fixtures are started by controlplane.services."""
