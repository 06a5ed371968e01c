"""milter: outbound mail policy gateway enforcing SE 79/SE/2019 at the mail layer."""

__version__ = "0.1.0"
