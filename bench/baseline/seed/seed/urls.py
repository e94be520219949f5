from django.urls import path

from notifications import views

urlpatterns = [
    path("healthz", views.healthz),
    path("api/v1/notifications", views.create_notification),
    path("api/v1/notifications/batch", views.create_batch),
    path("api/v1/groups/<str:group>/events", views.group_event),
]

handler404 = "notifications.views.not_found"
handler500 = "notifications.views.server_error"
handler400 = "notifications.views.bad_request"
