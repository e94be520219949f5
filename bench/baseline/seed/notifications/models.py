from datetime import timezone

from django.db import models


class Notification(models.Model):
    """One stored notification (id is a bigserial)."""

    id = models.BigAutoField(primary_key=True)
    user = models.CharField(max_length=64, db_index=True)
    message = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    read = models.BooleanField(default=False)

    class Meta:
        indexes = [
            # initial_state: the user's unread, newest first; unread_count.
            models.Index(fields=["user", "read", "-id"], name="notif_user_read_id"),
        ]

    def to_dict(self):
        """The contract's notification object N."""
        return {
            "id": self.id,
            "user": self.user,
            "message": self.message,
            "created_at": rfc3339_ms(self.created_at),
            "read": self.read,
        }


def rfc3339_ms(dt):
    """2026-11-25T19:21:08.123Z (UTC, milliseconds)."""
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
