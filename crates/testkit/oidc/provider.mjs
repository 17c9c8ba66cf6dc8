// A real OIDC provider on loopback for Gatehouse's tests, driven by crates/testkit/src/oidc.rs.
//
//   node provider.mjs <port>
//
// Serves oauth2-mock-server's endpoints (discovery document, JWKS, authorize, token, ...) on
// http://127.0.0.1:<port>, prints `ready <issuer-url>` on stdout once listening, then answers
// one JSON object per line on stdin with one JSON line on stdout (see `commands` below; the loop
// is `serve` in ../lineproto.mjs). A request may carry an "id", which its answer repeats.
// Failures answer {"error": "..."}. Closing stdin stops the provider. Diagnostics go to stderr;
// stdout carries nothing but the protocol.
//
// oauth2-mock-server's OAuth2Server is OAuth2Issuer + OAuth2Service + HttpServer glued together,
// with no way to see requests or drop a key. So this script assembles the same public classes
// itself: the HTTP listener is wrapped to count JWKS fetches, and the issuer is a subclass whose
// key store can be swapped for a fresh one (JWKStore has no removal), which is how keys rotate.
//
// The authorization-code flow is the package's own: GET /authorize redirects at once to the
// redirect_uri with a fresh code (no login page), and POST /token with
// grant_type=authorization_code issues an access token and an id_token (aud = client_id, the
// nonce given to /authorize). `login_as` sets the claims of the user "logging in" that way, laid
// over both tokens through the service's beforeTokenSigning event.

import { HttpServer, JWKStore, OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

import { serve } from '../lineproto.mjs';

const ALG = 'RS256';
const JWKS_PATH = '/jwks';
// The package's default token endpoint.
const TOKEN_PATH = '/token';
const HOST = '127.0.0.1';

// Anything a dependency logs must not end up in the protocol stream.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(1);
}

/** An issuer whose key store can be replaced as a whole. */
class RotatingIssuer extends OAuth2Issuer {
  #store = new JWKStore();

  get keys() {
    return this.#store;
  }

  /** Makes a store holding one new key only, then publishes it; returns the new key. */
  async rotate() {
    const store = new JWKStore();
    const key = await store.generate(ALG);
    this.#store = store;
    return key;
  }
}

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  fail(`usage: node provider.mjs <port 1-65535>, got ${JSON.stringify(process.argv[2])}`);
}

const issuer = new RotatingIssuer();
// Set before listening: left unset, the package names the issuer http://localhost:<port> for a
// 127.0.0.1 listener, and localhost may resolve to ::1 where nothing listens.
issuer.url = `http://${HOST}:${port}`;
let signingKey = await issuer.rotate();

const service = new OAuth2Service(issuer, { jwks: JWKS_PATH, token: TOKEN_PATH });
let jwksFetches = 0;
// Token requests with grant_type=authorization_code, and those of them carrying a code_verifier
// (PKCE), whether or not the provider accepted them.
let codeExchanges = 0;
let pkceExchanges = 0;
const http = new HttpServer((req, res) => {
  // Express routes case-insensitively and ignores a trailing slash; count the same requests.
  const path = (req.url ?? '').split('?')[0].toLowerCase().replace(/\/+$/, '');
  if ((req.method === 'GET' || req.method === 'HEAD') && path === JWKS_PATH) {
    jwksFetches += 1;
  }
  if (req.method === 'POST' && path === TOKEN_PATH) {
    // The body is parsed by the service (onto req.body) before it answers.
    res.on('finish', () => {
      const body = req.body;
      if (body !== null && typeof body === 'object' && body.grant_type === 'authorization_code') {
        codeExchanges += 1;
        if (typeof body.code_verifier === 'string') pkceExchanges += 1;
      }
    });
  }
  service.requestHandler(req, res);
});

// The claims of the user logging in through the authorization-code flow (see `login_as`).
let loginClaims = {};
service.on('beforeTokenSigning', (token, req) => {
  if (req?.body?.grant_type === 'authorization_code') applyClaims(loginClaims)(token.header, token.payload);
});

// An issuer with its own key, never published: tokens from it must be refused.
let rogue;
async function rogueIssuer() {
  if (rogue === undefined) {
    const candidate = new OAuth2Issuer();
    candidate.url = issuer.url;
    await candidate.keys.generate(ALG);
    rogue = candidate;
  }
  return rogue;
}

function checkClaims(claims) {
  if (claims === undefined) return {};
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    throw new Error(`"claims" must be a JSON object, got ${JSON.stringify(claims)}`);
  }
  return claims;
}

function checkExpiresIn(expiresIn) {
  if (expiresIn === undefined) return 3600;
  if (!Number.isInteger(expiresIn)) {
    throw new Error(`"expires_in" must be an integer number of seconds, got ${JSON.stringify(expiresIn)}`);
  }
  return expiresIn;
}

/** The package's default payload (iss, iat, exp, nbf) overridden by `claims`; null removes a claim. */
function applyClaims(claims) {
  return (_header, payload) => {
    for (const [name, value] of Object.entries(claims)) {
      if (value === null) delete payload[name];
      else payload[name] = value;
    }
  };
}

const commands = {
  async token(req) {
    const claims = checkClaims(req.claims);
    const token = await issuer.buildToken({
      kid: signingKey.kid,
      expiresIn: checkExpiresIn(req.expires_in),
      scopesOrTransform: applyClaims(claims),
    });
    return { token };
  },

  async token_unknown_key(req) {
    const claims = checkClaims(req.claims);
    const other = await rogueIssuer();
    const token = await other.buildToken({
      expiresIn: checkExpiresIn(req.expires_in),
      scopesOrTransform: applyClaims(claims),
    });
    return { token };
  },

  async rotate() {
    const old = signingKey.kid;
    signingKey = await issuer.rotate();
    const published = issuer.keys.toJSON().map((k) => k.kid);
    if (published.includes(old) || !published.includes(signingKey.kid)) {
      throw new Error(`rotation left the JWKS with kids ${JSON.stringify(published)}`);
    }
    return { kid: signingKey.kid, old_kid: old };
  },

  async jwk() {
    const jwk = issuer.keys.toJSON().find((k) => k.kid === signingKey.kid);
    if (jwk === undefined) throw new Error('the signing key is missing from the JWKS');
    return { jwk };
  },

  /** Claims laid over the access token and id_token of every later authorization-code exchange. */
  async login_as(req) {
    if (req.claims === undefined) throw new Error('"claims" is required');
    loginClaims = { ...checkClaims(req.claims) };
    return {};
  },

  async stats() {
    return { jwks_fetches: jwksFetches, code_exchanges: codeExchanges, pkce_exchanges: pkceExchanges };
  },
};

try {
  await http.start(port, HOST);
} catch (err) {
  // The Rust side looks for the code (EADDRINUSE) to retry on another port.
  fail(`cannot listen on ${HOST}:${port}: ${err?.code ?? ''} ${err?.message ?? err}`);
}
process.stdout.write(`ready ${issuer.url}\n`);

await serve('provider.mjs', commands);

// stdin closed: the test process is done (or gone).
await http.stop().catch(() => {});
process.exit(0);
