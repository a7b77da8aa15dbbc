"""A network camera on loopback for the tests: an HTTP MJPEG stream (multipart/x-mixed-replace),
as IP cameras serve it, looping over the JPEG files given, at a bounded frame rate.

    python -m tests.mjpeg_server PORT FPS FILE.jpg [FILE.jpg ...]
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main(argv):
    port, fps, files = int(argv[0]), float(argv[1]), [Path(p).read_bytes() for p in argv[2:]]

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
                    jpeg = files[i % len(files)]
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
