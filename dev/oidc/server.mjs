// Development OpenID provider (npm oidc-provider) for `make up` and the tests.
//
// Issuer http://127.0.0.1:$OIDC_PORT (default 3000). Any login name is an account (alice, bob,
// carol are the demo users); its subject is the name. Access tokens for the API resource
// (urn:opencode:api) are RS256 JWTs with that audience. Keys and storage are ephemeral: each start
// signs with a new key, so a restart invalidates issued tokens as a key rotation would. Never use this configuration in production.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { Provider } from 'oidc-provider';

const port = Number(process.env.OIDC_PORT || 3000);
const issuer = process.env.OIDC_ISSUER || `http://127.0.0.1:${port}`;
const audience = process.env.OIDC_AUDIENCE || 'urn:opencode:api';
const ttl = Number(process.env.OIDC_ACCESS_TOKEN_TTL || 3600);

// A fresh signing key per start (with a fresh kid), so a restart behaves like a key rotation.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' };

// For tests of token validation only: write the signing key (and a spare key the provider never
// publishes) where the test can read them, so it can forge tokens the service must refuse.
if (process.env.OIDC_TEST_KEYS_OUT) {
  const spare = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const pem = (k) => k.export({ type: 'pkcs8', format: 'pem' });
  const publicPem = crypto.createPublicKey(privateKey).export({ type: 'spki', format: 'pem' });
  const keys = { kid: signingKey.kid, privatePem: pem(privateKey), publicPem, spare: { kid: crypto.randomUUID(), privatePem: pem(spare) } };
  fs.writeFileSync(process.env.OIDC_TEST_KEYS_OUT, JSON.stringify(keys), { mode: 0o600 });
}

const provider = new Provider(issuer, {
  jwks: { keys: [signingKey] },
  clients: [
    {
      // Public client for scripts and the CLI (authorization code + PKCE, no secret).
      client_id: 'oc-cli',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
    },
    {
      // Confidential client for the browser sign-in (issue #3).
      client_id: 'oc-web',
      client_secret: process.env.OIDC_WEB_SECRET || 'oc-web-secret',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      // The query service's sign-in callback(s); tests run it on other ports.
      redirect_uris: (process.env.OIDC_WEB_REDIRECT_URIS || 'http://127.0.0.1:8082/auth/callback').split(','),
    },
  ],
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: {
    devInteractions: { enabled: true },
    // Command-line sign-in: the OAuth device authorization grant (RFC 8628).
    deviceFlow: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'openid',
        audience,
        accessTokenFormat: 'jwt',
        accessTokenTTL: ttl,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  pkce: { required: () => true },
  // Access tokens carry the user's email and name, as many company providers configure it, so
  // the API learns them at first use without a userinfo call.
  async extraTokenClaims(ctx, token) {
    if (!token.accountId) return undefined;
    const sub = token.accountId;
    return { email: `${sub}@example.test`, email_verified: true, name: sub[0].toUpperCase() + sub.slice(1) };
  },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: `${sub}@example.test`,
          email_verified: true,
          name: sub[0].toUpperCase() + sub.slice(1),
        };
      },
    };
  },
});

provider.listen(port, process.env.OIDC_HOST || '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
