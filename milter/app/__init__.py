"""The application layer: what every entry point (SMTP proxy, milter front-end,
command line, review UI) shares, between the protocols above and the pure core below."""
