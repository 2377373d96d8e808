// Prints an access token for a demo user by walking the real authorization-code + PKCE flow of
// the development provider, with its login form filled in by script.
// Usage: node token.mjs <user> [issuer]
import crypto from 'node:crypto';

const user = process.argv[2] || 'alice';
const issuer = process.argv[3] || process.env.OIDC_ISSUER || 'http://127.0.0.1:3000';
const redirect = 'http://127.0.0.1/callback';
const b64 = (buf) => buf.toString('base64url');
const verifier = b64(crypto.randomBytes(32));
const challenge = b64(crypto.createHash('sha256').update(verifier).digest());

const jar = new Map();
async function go(url, init = {}) {
  const headers = { ...(init.headers || {}), cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') };
  const res = await fetch(new URL(url, issuer), { ...init, headers, redirect: 'manual' });
  for (const c of res.headers.getSetCookie()) {
    const [pair] = c.split(';');
    const i = pair.indexOf('=');
    jar.set(pair.slice(0, i), pair.slice(i + 1));
  }
  return res;
}
const form = (fields) => ({
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams(fields).toString(),
});

const auth = new URL('/auth', issuer);
Object.entries({
  client_id: 'oc-cli', response_type: 'code', scope: 'openid', redirect_uri: redirect,
  code_challenge: challenge, code_challenge_method: 'S256', state: b64(crypto.randomBytes(8)),
  nonce: b64(crypto.randomBytes(8)),
}).forEach(([k, v]) => auth.searchParams.set(k, v));

let res = await go(auth);
let code;
for (let step = 0; step < 10 && !code; step++) {
  const location = res.headers.get('location');
  if (!location) throw new Error(`unexpected ${res.status} from the provider: ${await res.text()}`);
  const next = new URL(location, issuer);
  if (next.href.startsWith(redirect)) {
    code = next.searchParams.get('code');
    if (!code) throw new Error(`no code: ${next.href}`);
    break;
  }
  if (next.pathname.startsWith('/interaction/')) {
    const page = await (await go(next)).text();
    const prompt = page.includes('name="login"') ? { prompt: 'login', login: user, password: 'dev' } : { prompt: 'consent' };
    res = await go(next, form(prompt));
  } else {
    res = await go(next);
  }
}
const token = await fetch(new URL('/token', issuer), form({
  grant_type: 'authorization_code', code, redirect_uri: redirect, client_id: 'oc-cli', code_verifier: verifier,
}));
const body = await token.json();
if (!body.access_token) throw new Error(`token exchange failed: ${JSON.stringify(body)}`);
console.log(body.access_token);
