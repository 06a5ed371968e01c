"""The review web UI (``milter review``): officers review the quarantine, heads of agency
watch their agency's mail, auditors read the audit log, admins manage accounts.

``app`` holds the routes, ``sessions`` the server-side sessions and CSRF tokens,
``mailview`` and ``htmlsafe`` what a held message shows (and never runs), ``charts``
the dashboard's SVG, ``i18n`` every word in Bahasa Indonesia and English.
"""
