"""The notification example's handlers, and the streams each one reads, writes and appends to.

Run its bots with ``streamcqrs run examples.notification.app:app`` (all of them), or one
subsystem's with ``--only notification`` / ``--only email`` / ``--only slack``. A handler
belongs to the subsystem of its input stream, so the saga's handlers of email and Slack
outcomes run with ``--only email`` and ``--only slack``.

=====================  ============================  ==================  =========================
handler                input                         concern             outputs
=====================  ============================  ==================  =========================
request_notification   notification/client-ops       notify              notification aggregate,
                                                                         email/slack client-ops,
                                                                         sagas, delayed deadline
saga: start            notification/sagas            notification-saga   saga (+ terminal event)
saga: outcomes         email/events, slack/events    notification-saga   saga (+ terminal event)
saga: failures         email/dead, slack/dead        notification-saga   saga (+ terminal event)
saga: deadline         notification/internal-ops     notification-saga   saga (+ terminal event)
report_failure         notification/events           report-failure      notification/internal-ops
email_internal_team    notification/internal-ops     internal            email/client-ops
record_report          email/events                  failure-report      notification aggregate
project                notification/events           views               views, snapshots
send_email             email/client-ops              send                email delivery aggregate
send_slack             slack/client-ops              send                slack delivery aggregate
=====================  ============================  ==================  =========================
"""

from __future__ import annotations

from examples.notification import delivery, notify, saga, senders, views
from examples.notification.messages import (
    EmailSent,
    FailureReportedToInternalTeam,
    NotificationFailed,
    NotificationRequested,
    NotificationSent,
    NotificationSuppressed,
    ReportFailure,
    SendEmail,
    SendNotification,
    SendSlackMessage,
)
from streamcqrs.handlers import App
from streamcqrs.handlers.saga import SagaEnded, SagaOutcome, SagaTimedOut

app = App("notification")
"""The app ``streamcqrs run examples.notification.app:app`` runs."""

# The email and Slack senders, and the one HTTP client behind the Slack one, are made once
# per bot process and closed when it stops; handlers read them from ctx.resources.
app.on_startup(senders.open_senders)
app.on_shutdown(senders.close_senders)

app.handler(
    SendNotification,
    stream="notification/client-ops",
    concern="notify",
    appends=["notification"],
    writes=[
        "email/client-ops",
        "slack/client-ops",
        "notification/sagas",
        "notification/internal-ops",
    ],
)(notify.request_notification)

app.saga(saga.DELIVERY)

app.handler(NotificationFailed, stream="notification/events", concern="report-failure",
            writes=["notification/internal-ops"])(notify.report_failure)  # fmt: skip
app.handler(ReportFailure, stream="notification/internal-ops", concern="internal",
            appends=["notification"],
            writes=["email/client-ops"])(notify.email_internal_team)  # fmt: skip
app.handler(EmailSent, stream="email/events", concern="failure-report",
            appends=["notification"])(notify.record_report)  # fmt: skip

app.handler(
    NotificationRequested,
    NotificationSent,
    NotificationFailed,
    NotificationSuppressed,
    FailureReportedToInternalTeam,
    SagaOutcome,
    SagaTimedOut,
    SagaEnded,
    stream="notification/events",
    concern="views",
    start="beginning",  # a projection: a new one builds its views from the whole history
    appends=["notification"],
    reads=[views.VIEWS],
    writes=[views.VIEWS, "notification/snapshots"],
)(views.project)

app.handler(SendEmail, stream="email/client-ops", concern="send",
            appends=["email"])(delivery.send_email)  # fmt: skip
app.handler(SendSlackMessage, stream="slack/client-ops", concern="send",
            appends=["slack"])(delivery.send_slack)  # fmt: skip

__all__ = ["app"]
