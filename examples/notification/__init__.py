"""The notification-system example: client, notification/email/Slack bots, saga, views, API.

The Naos workflow (the Naos.Notification README) built only on the public API of ``domain``,
``streams``, ``handlers`` and ``bots``. Three subsystems, each with its own streams:
``notification``, ``email`` and ``slack``.

Try it: ``python -m examples.notification demo`` (needs ``pip install -e '.[example]'``).

Where things are:

==================  ===========================================================================
``messages``        every operation and event, with its stored name
``client``          ``send_notification``, ``notification_status``: the client protocol
``app``             the handlers and what each declares (``streamcqrs run ...app:app``)
``notify``          notification bot: first event, sends, saga entry, deadline; failure report
``delivery``        email and Slack bots: send for real, write the outcome event
``senders``         SMTP (smtplib) and Slack webhook (httpx) senders
``saga``            the saga aggregate: settles on exactly one terminal event
``views``           ``NotificationView`` projection, snapshots, ``rebuild_views``
``api``             FastAPI: POST/GET notifications, status, by email, audit events
``directory``       recipients and their channel preferences
``config``          ``NOTIFICATION_*`` settings
``receivers``       local SMTP server (aiosmtpd) and Slack webhook stand-in
``demo``            the demo command
``bench_support``   fake senders for benchmarks (``NOTIFICATION_FAKE_SENDERS=1``)
==================  ===========================================================================
"""
