//! A browser for tests, reduced to what sign-in needs: a cookie jar, no automatic redirects, and
//! the development OpenID provider's login and consent forms filled in by script.

use std::collections::HashMap;

use reqwest::Url;

use crate::System;

/// A browser, reduced to what sign-in needs: a cookie jar and no automatic redirects.
pub struct Browser {
    pub http: reqwest::Client,
    /// Cookie name → value.
    pub jar: HashMap<String, String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let http =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, jar: HashMap::new() }
    }

    pub fn cookies(&self) -> String {
        self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub async fn send(&mut self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let res = req.header("cookie", self.cookies()).send().await.unwrap();
        for set in res.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attrs) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.to_ascii_lowercase().contains("max-age=0") || value.is_empty() {
                self.jar.remove(name.trim());
            } else {
                self.jar.insert(name.trim().to_owned(), value.to_owned());
            }
        }
        res
    }

    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        let req = self.http.get(url);
        self.send(req).await
    }

    /// Follow the provider's redirects, filling in its login and consent forms as `user`,
    /// until a page (not a redirect) or a redirect back to our sign-in callback.
    pub async fn drive(
        &mut self,
        system: &System,
        mut res: reqwest::Response,
        user: &str,
    ) -> reqwest::Response {
        for _ in 0..12 {
            if !res.status().is_redirection() {
                return res;
            }
            let location = res.headers()["location"].to_str().unwrap().to_owned();
            let next = Url::parse(&system.issuer).unwrap().join(&location).unwrap();
            if next.path() == "/auth/callback" {
                return res;
            }
            if next.path().starts_with("/interaction/") {
                let page = self.get(next.as_str()).await.text().await.unwrap();
                let form: Vec<(&str, &str)> = if page.contains("name=\"login\"") {
                    vec![("prompt", "login"), ("login", user), ("password", "dev")]
                } else {
                    vec![("prompt", "consent")]
                };
                let req = self.http.post(next.as_str()).form(&form);
                res = self.send(req).await;
            } else {
                res = self.get(next.as_str()).await;
            }
        }
        panic!("the provider kept redirecting");
    }

    /// Sign in as `user`; returns where the service finally sends the browser.
    pub async fn sign_in(&mut self, system: &System, user: &str, return_to: &str) -> String {
        let start =
            self.get(&format!("{}/auth/login?returnTo={return_to}", system.query_url())).await;
        let back = self.drive(system, start, user).await;
        assert!(
            back.status().is_redirection(),
            "sign-in ended on a page: {}",
            back.text().await.unwrap()
        );
        let location = back.headers()["location"].to_str().unwrap().to_owned();
        let callback = Url::parse(&system.issuer).unwrap().join(&location).unwrap();
        let done = self.get(callback.as_str()).await;
        assert_eq!(done.status(), 303, "callback: {}", done.text().await.unwrap());
        done.headers()["location"].to_str().unwrap().to_owned()
    }

    /// Submit the first form of `page` to `base`: its fields as they are, and `typed` as if the
    /// user had typed them.
    pub async fn submit_form(
        &mut self,
        base: &str,
        page: &str,
        typed: &[(&str, &str)],
    ) -> reqwest::Response {
        let action =
            attribute(page.split("<form").nth(1).expect("a form"), "action").unwrap_or_default();
        let mut fields: Vec<(String, String)> = page
            .split("<input")
            .skip(1)
            .map(|rest| rest.split('>').next().unwrap_or_default())
            .filter_map(|tag| {
                Some((attribute(tag, "name")?, attribute(tag, "value").unwrap_or_default()))
            })
            .filter(|(name, _)| !typed.iter().any(|(t, _)| t == name))
            .collect();
        fields.extend(typed.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let url = Url::parse(base).unwrap().join(&action).unwrap();
        let req = self.http.post(url).form(&fields);
        self.send(req).await
    }
}

/// The value of `name="…"` in an HTML tag's text.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].replace("&amp;", "&"))
}
