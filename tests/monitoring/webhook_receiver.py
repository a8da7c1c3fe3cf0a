"""A webhook receiver for the lab: appends each POSTed JSON body, with the
time it arrived, as one line to a file. Runs inside a lab host (Debian's
python3), listening on that host's lab address only.

    python3 webhook_receiver.py ADDRESS PORT OUTFILE
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(self.server.outfile, "a", encoding="utf-8") as out:
            out.write(json.dumps({"received": time.time(), "path": self.path,
                                  "body": json.loads(body)}) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # quiet: the file is the record
        pass


if __name__ == "__main__":
    address, port, outfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    server = HTTPServer((address, port), Receiver)
    server.outfile = outfile
    server.serve_forever()
