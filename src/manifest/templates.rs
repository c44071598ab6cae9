//! `[templates.NAME]` and `extends`: stage keys written once, taken by several stages.

use super::*;

impl Loader<'_> {
    /// `[templates.NAME]` tables: stage keys that stages take with `extends = "NAME"`.
    pub(super) fn templates<'a, 'i>(
        &mut self,
        v: Option<&'a Spanned<DeValue<'i>>>,
    ) -> BTreeMap<String, &'a DeTable<'i>> {
        let mut out = BTreeMap::new();
        let Some(t) = v.and_then(|v| self.table("templates", v)) else {
            return out;
        };
        for (k, v) in t.iter() {
            let name = k.get_ref().to_string();
            let Some(body) = self.table(&format!("templates.{name}"), v) else {
                continue;
            };
            if let Some((ek, _)) = body.get_key_value("extends") {
                let o = self.at(&ek.span());
                self.err(
                    &o,
                    format!("template `{name}` cannot extend another template"),
                )
                .hint = Some("give each stage one template; put shared keys in it".into());
                continue;
            }
            out.insert(name, body);
        }
        out
    }

    /// A stage's table with the keys of the template it `extends` (the stage's own keys
    /// win; `inputs` and `resources` merge key by key), and the template's name and lines.
    #[allow(clippy::type_complexity)]
    pub(super) fn extend<'i>(
        &mut self,
        stage: &str,
        t: &DeTable<'i>,
        templates: &BTreeMap<String, &DeTable<'i>>,
    ) -> Option<(DeTable<'i>, Option<(String, BTreeSet<usize>)>)> {
        let Some(ev) = t.get("extends") else {
            return Some((t.clone(), None));
        };
        let name = self.string(&format!("stages.{stage}.extends"), ev)?;
        let Some(template) = templates.get(&name) else {
            let o = self.at(&ev.span());
            let d = self.map.error(
                &o,
                format!("stage `{stage}` extends unknown template `{name}`"),
            );
            let d = if templates.is_empty() {
                d.hint(format!("declare it as [templates.{name}]"))
            } else {
                d.suggest(&name, templates.keys().map(String::as_str))
            };
            self.push(d);
            return None;
        };
        let mut merged = (*template).clone();
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            if key == "extends" {
                continue;
            }
            if let (Some(DeValue::Table(base)), DeValue::Table(own)) =
                (merged.get(key).map(|b| b.get_ref()), v.get_ref())
                && ["inputs", "resources"].contains(&key)
            {
                let mut both = base.clone();
                for (ik, iv) in own.iter() {
                    both.remove(ik.get_ref().as_ref());
                    both.insert(ik.clone(), iv.clone());
                }
                merged.remove(key);
                merged.insert(k.clone(), Spanned::new(v.span(), DeValue::Table(both)));
                continue;
            }
            merged.remove(key);
            merged.insert(k.clone(), v.clone());
        }
        let mut lines = BTreeSet::new();
        for (k, v) in template.iter() {
            if let (Origin::File { line: a, .. }, Origin::File { line: b, .. }) = (
                self.at(&k.span()),
                self.at(&(v.span().end.saturating_sub(1)..v.span().end)),
            ) {
                lines.extend(a..=b);
            }
        }
        Some((merged, Some((name, lines))))
    }
}
