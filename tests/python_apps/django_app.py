"""Django fixture for tests/python_package.rs: a one-file project, served as WSGI
(``django_app:application``) and as ASGI (``django_app:asgi_application``)."""
import os
import sys
import time
import zlib

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="handoff-test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,
    LOGGING_CONFIG=None,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def index(request):
    return HttpResponse(f"hello from django, worker {os.environ.get('HANDOFF_WORKER_ID')}\n", content_type="text/plain")


@csrf_exempt
def echo(request):
    data = request.body
    return HttpResponse(f"{len(data)} {zlib.crc32(data):08x}\n", content_type="text/plain")


def stream(request):
    return StreamingHttpResponse((f"part {i}\n" for i in range(5)), content_type="text/plain")


def boom(request):
    raise RuntimeError("the fixture app raised on purpose")


def sleep(request):
    print(f"fixture: sleeping in worker {os.environ.get('HANDOFF_WORKER_ID')}", file=sys.stderr, flush=True)
    time.sleep(float(request.GET.get("s", "1")))
    return HttpResponse("slept\n", content_type="text/plain")


urlpatterns = [
    path("", index),
    path("echo", echo),
    path("stream", stream),
    path("raise", boom),
    path("sleep", sleep),
]

application = get_wsgi_application()
asgi_application = get_asgi_application()
