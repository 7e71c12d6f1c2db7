#!/usr/bin/env python3
"""A small OTLP trace receiver for the telemetry tests: OTLP/HTTP (protobuf, POST /v1/traces)
and OTLP/gRPC (TraceService/Export), decoded with the `opentelemetry-proto` package.

    otlp_receiver.py --out SPANS.jsonl --ports PORTS.json [--mode ok|hang|fail]

Listens on two free loopback ports and writes {"http": N, "grpc": M} to PORTS.json once both
listen. Every span received is appended to SPANS.jsonl as one JSON object: trace_id, span_id,
parent_span_id (hex), name, kind, attributes, status (code, message), resource (attributes),
transport ("http" or "grpc") and the request's headers (metadata for gRPC). --mode hang
accepts requests and never answers them; --mode fail answers 503 (UNAVAILABLE for gRPC).
"""
import argparse
import json
import socketserver
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tsg

LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    x = getattr(v, kind)
    if kind == "array_value":
        return [value(i) for i in x.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in x.values}
    if kind == "bytes_value":
        return x.hex()
    return x


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def record(out, request, transport, headers):
    lines = []
    for rs in request.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                lines.append(json.dumps({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "attributes": attrs(s.attributes),
                    "status": {"code": s.status.code, "message": s.status.message},
                    "start_ns": s.start_time_unix_nano,
                    "end_ns": s.end_time_unix_nano,
                    "resource": resource,
                    "transport": transport,
                    "headers": headers,
                }))
    with LOCK, open(out, "a") as f:
        for line in lines:
            f.write(line + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--mode", default="ok", choices=["ok", "hang", "fail"])
    a = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if a.mode == "hang":
                time.sleep(3600)
                return
            if a.mode == "fail":
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path != "/v1/traces":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            req = ts.ExportTraceServiceRequest()
            req.ParseFromString(body)
            headers = {k.lower(): v for k, v in self.headers.items()}
            record(a.out, req, "http", headers)
            reply = ts.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    class Server(socketserver.ThreadingMixIn, HTTPServer):
        daemon_threads = True

    http = Server(("127.0.0.1", 0), Handler)

    class Traces(tsg.TraceServiceServicer):
        def Export(self, request, context):
            if a.mode == "hang":
                time.sleep(3600)
            if a.mode == "fail":
                context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
            headers = {k: v for k, v in context.invocation_metadata()}
            record(a.out, request, "grpc", headers)
            return ts.ExportTraceServiceResponse()

    g = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    tsg.add_TraceServiceServicer_to_server(Traces(), g)
    grpc_port = g.add_insecure_port("127.0.0.1:0")
    g.start()
    threading.Thread(target=http.serve_forever, daemon=True).start()
    with open(a.ports + ".tmp", "w") as f:
        json.dump({"http": http.server_address[1], "grpc": grpc_port}, f)
    import os
    os.rename(a.ports + ".tmp", a.ports)
    print(f"otlp_receiver: http {http.server_address[1]} grpc {grpc_port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
