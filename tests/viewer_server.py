"""One origin on 127.0.0.1 for the viewer test: OHIF's prebuilt static files and Orthanc's
DICOMweb behind a small reverse proxy (so the browser makes no cross-origin request).

* ``/dicom-web/...`` and ``/wado...`` are forwarded to Orthanc (method, query, Accept and
  body kept, the answer streamed back as is);
* ``/app-config.js`` is the configuration written for this test (OHIF's data source pointing
  at this origin);
* any other path is a file of OHIF's ``dist/`` folder, or ``index.html`` (OHIF is a
  single-page app: /viewer?StudyInstanceUIDs=... is routed in the browser).
"""

from __future__ import annotations

import mimetypes
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'orthanc',
  investigationalUseDialog: { option: 'never' },
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (lungnode test)',
      name: 'orthanc',
      wadoUriRoot: '%(origin)s/wado',
      qidoRoot: '%(origin)s/dicom-web',
      wadoRoot: '%(origin)s/dicom-web',
      qidoSupportsIncludeField: false,
      supportsReject: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
"""

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authenticate", "proxy-authorization", "content-length"}


class ViewerServer:
    """``with ViewerServer(dist, orthanc_url) as server: server.url``"""

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.dist = Path(dist).resolve()
        self.orthanc_url = orthanc_url.rstrip("/")
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self.requests: list[str] = []

    def __enter__(self) -> "ViewerServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        server = self
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args) -> None:  # keep pytest output clean
                server.requests.append(self.path)

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web") or path.startswith("/wado"):
                    return self._proxy()
                if path == "/app-config.js":
                    return self._send(200, "application/javascript",
                                      (APP_CONFIG % {"origin": server.url}).encode())
                target = (server.dist / path.lstrip("/")).resolve()
                if server.dist not in target.parents or not target.is_file():
                    target = server.dist / "index.html"
                kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                if target.suffix == ".wasm":
                    kind = "application/wasm"
                return self._send(200, kind, target.read_bytes())

            def _send(self, status: int, kind: str, body: bytes, headers=()) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                request = urllib.request.Request(server.orthanc_url + self.path, data=body,
                                                 method=self.command)
                for key in ("Accept", "Content-Type"):
                    if self.headers.get(key):
                        request.add_header(key, self.headers[key])
                # Orthanc's DICOMweb plugin builds BulkDataURIs from the Host header: the
                # browser's origin, so that they come back through this proxy.
                request.add_header("Host", self.headers.get("Host", ""))
                try:
                    with opener.open(request, timeout=120) as answer:
                        status, headers, data = answer.status, answer.headers, answer.read()
                except urllib.error.HTTPError as exc:
                    status, headers, data = exc.code, exc.headers, exc.read()
                kind = headers.get("Content-Type", "application/octet-stream")
                extra = [(k, v) for k, v in headers.items()
                         if k.lower() not in _HOP_BY_HOP and k.lower() != "content-type"]
                self._send(status, kind, data, extra)

        return Handler
