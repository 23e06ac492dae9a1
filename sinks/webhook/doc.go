// Package webhook delivers revocation requests over HTTP: each request of a
// batch is POSTed to one URL with the signed JSON as body, exactly as signed
// (detector.Revocation.Body), and headers
//
//	Content-Type: application/json
//	Idempotency-Key: <request_id>
//	X-Vigil-Signature: <the request's Ed25519 signature, base64>
//	X-Vigil-Key-Id: <kid>
//
// plus the configured non-secret headers and, when configured, a bearer
// token or basic auth read from files.
//
// A response is success when it is 2xx, or 409 Conflict (the receiver
// already has this Idempotency-Key). 408, 429, 5xx and network errors are
// transient: Write returns a plain error and its caller (detector.Fanout)
// retries the batch with capped backoff, with the same Idempotency-Key. Any
// other status (other 4xx, and 3xx: redirects are not followed, since they
// would re-send the request and its credentials elsewhere) wraps
// detector.ErrPermanent: the receiver refuses the request, or the URL is
// wrong. So do TLS failures that the configuration causes
// (detector.IsTLSConfigError): vigil does not trust the receiver's
// certificate, or the receiver refuses vigil's client certificate or its
// absence; the error names the tls.* settings to check. Requests the receiver has acknowledged are remembered (a bounded
// set of recent request ids), so a retried batch does not POST them again;
// the receiver still has to deduplicate by Idempotency-Key, because a
// response that is lost in transit makes vigil send it again.
//
// Secrets come only from files and never appear in errors or logs: the
// bearer token and the basic-auth password are re-read for every request
// (so they can be rotated), the TLS client key is read by New; key and
// password files that other users may read are refused
// (detector.CheckSecretFile). The URL must
// not carry credentials, and errors name it without its query.
//
// Not here: the receiving side (verify with detector.VerifyRevocation and
// deduplicate by Idempotency-Key), and alerts (Alertmanager has its own
// sink).
package webhook
