"""The one training loop and the text batching it uses."""
