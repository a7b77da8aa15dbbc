"""A network camera on loopback for the tests: an HTTP MJPEG stream (multipart/x-mixed-replace),
as IP cameras serve it, at a bounded frame rate. It loops over the JPEG files given, or, with
``--follow CONTROL``, shows the JPEG file whose path the file CONTROL holds (re-read every frame,
so a test changes the picture by rewriting CONTROL).

    python -m tests.mjpeg_server PORT FPS FILE.jpg [FILE.jpg ...]
    python -m tests.mjpeg_server PORT FPS --follow CONTROL
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main(argv):
    port, fps = int(argv[0]), float(argv[1])
    if argv[2] == "--follow":
        control = Path(argv[3])
        next_jpeg = lambda i: Path(control.read_text().strip()).read_bytes()  # noqa: E731
    else:
        files = [Path(p).read_bytes() for p in argv[2:]]
        next_jpeg = lambda i: files[i % len(files)]  # noqa: E731

    class Stream(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            i = 0
            try:
                while True:
                    jpeg = next_jpeg(i)
                    i += 1
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                     + jpeg + b"\r\n")
                    time.sleep(1 / fps)
            except (BrokenPipeError, ConnectionResetError):
                pass

    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Stream)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
