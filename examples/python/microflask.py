"""Just enough of Flask's shape (Flask(__name__), @app.route) for the example app."""


class Flask:
    def __init__(self, name):
        self.name, self.routes = name, {}

    def route(self, path):
        def register(view):
            self.routes[path] = view
            return view
        return register

    def __call__(self, environ, start_response):
        view = self.routes.get(environ.get("PATH_INFO") or "/")
        status, body = ("200 OK", view()) if view else ("404 Not Found", "not found\n")
        data = body.encode() if isinstance(body, str) else body
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
        return [data]
