//! The retail database of TauGym: users with payment methods, products with variants, and orders with their
//! payment history, generated from the authored catalog (`data/tau/catalog.json`) and a fixed seed.
//!
//! A generated database is immutable and shared (`BaseDb`); each episode works on a `Db`, a copy-on-write
//! overlay that clones only the records a tool changes. The state hash that decides the reward is a canonical
//! digest: SHA-256 over every user and order record in id order, each record digested from its JSON
//! serialisation (the unchanged ones precomputed once).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::gyms::{GymError, GymKind};

/// The seed of the built-in database.
pub const DB_SEED: u64 = 0x7A0_2025;
const USER_COUNT: usize = 120;

const CATALOG_JSON: &str = include_str!("../../../data/tau/catalog.json");

/// Rounds money to cents, after every operation, so that the same changes in another order hash the same.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Money as the agent and the customer write it (`54.31`).
pub fn money(x: f64) -> String {
    format!("{:.2}", round2(x))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub address1: String,
    pub address2: String,
    pub city: String,
    pub state: String,
    pub country: String,
    pub zip: String,
}

impl Address {
    pub fn one_line(&self) -> String {
        let mut parts = vec![self.address1.as_str()];
        if !self.address2.is_empty() {
            parts.push(&self.address2);
        }
        parts.extend([self.city.as_str(), self.state.as_str(), self.zip.as_str(), self.country.as_str()]);
        parts.join(", ")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum PaymentMethod {
    CreditCard { id: String, brand: String, last_four: String },
    GiftCard { id: String, balance: f64 },
    Paypal { id: String },
}

impl PaymentMethod {
    pub fn id(&self) -> &str {
        match self {
            PaymentMethod::CreditCard { id, .. }
            | PaymentMethod::GiftCard { id, .. }
            | PaymentMethod::Paypal { id } => id,
        }
    }

    /// How a customer names the method ("my visa credit card ending in 1234").
    pub fn describe(&self) -> String {
        match self {
            PaymentMethod::CreditCard { brand, last_four, .. } => format!("{brand} credit card ending in {last_four}"),
            PaymentMethod::GiftCard { .. } => "gift card".to_string(),
            PaymentMethod::Paypal { .. } => "PayPal account".to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Name {
    pub first_name: String,
    pub last_name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub user_id: String,
    pub name: Name,
    pub address: Address,
    pub email: String,
    pub payment_methods: BTreeMap<String, PaymentMethod>,
    pub orders: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub item_id: String,
    pub options: BTreeMap<String, String>,
    pub available: bool,
    pub price: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub name: String,
    pub product_id: String,
    pub variants: BTreeMap<String, Variant>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderItem {
    pub name: String,
    pub product_id: String,
    pub item_id: String,
    pub price: f64,
    pub options: BTreeMap<String, String>,
}

impl OrderItem {
    /// "Water Bottle (capacity: 750ml, color: blue)".
    pub fn describe(&self) -> String {
        describe_item(&self.name, &self.options)
    }
}

pub fn describe_item(name: &str, options: &BTreeMap<String, String>) -> String {
    let opts: Vec<String> = options.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{name} ({})", opts.join(", "))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub transaction_type: String,
    pub amount: f64,
    pub payment_method_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub user_id: String,
    pub address: Address,
    pub items: Vec<OrderItem>,
    pub status: String,
    pub payment_history: Vec<Transaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_items: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_payment_method_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_items: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_new_items: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_payment_method_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_price_difference: Option<f64>,
}

impl Order {
    pub fn total(&self) -> f64 {
        round2(self.items.iter().map(|i| i.price).sum())
    }
}

// ---------------------------------------------------------------------------------------------------------
// The authored catalog

#[derive(Clone, Debug, Deserialize)]
pub struct Catalog {
    pub products: Vec<ProductType>,
    pub first_names: Vec<String>,
    pub last_names: Vec<String>,
    pub places: Vec<Place>,
    pub streets: Vec<String>,
    pub card_brands: Vec<String>,
    pub traits: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ProductType {
    pub name: String,
    pub price: (f64, f64),
    pub options: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Place {
    pub city: String,
    pub state: String,
    pub zip: String,
}

fn data_error(message: impl Into<String>) -> GymError {
    GymError::Data { gym: GymKind::Tau, location: "data/tau/catalog.json".into(), message: message.into() }
}

pub fn catalog() -> Result<&'static Catalog, GymError> {
    static CATALOG: LazyLock<Result<Catalog, String>> = LazyLock::new(|| {
        let c: Catalog = serde_json::from_str(CATALOG_JSON).map_err(|e| e.to_string())?;
        if c.products.len() < 4
            || c.first_names.is_empty()
            || c.last_names.is_empty()
            || c.places.is_empty()
            || c.streets.is_empty()
            || c.card_brands.is_empty()
            || c.traits.len() < 2
            || c.products.iter().any(|p| p.options.is_empty() || p.options.values().any(|v| v.len() < 2))
        {
            return Err(
                "the catalog needs products with options of two or more values, names, places and streets".into()
            );
        }
        Ok(c)
    });
    CATALOG.as_ref().map_err(|e| data_error(e.clone()))
}

// ---------------------------------------------------------------------------------------------------------
// The shared base and the per-episode overlay

/// A generated database with its indexes and the digests of its records.
#[derive(Debug)]
pub struct BaseDb {
    pub seed: u64,
    pub products: Vec<Product>,
    pub users: Vec<User>,
    pub orders: Vec<Order>,
    product_index: HashMap<String, usize>,
    item_index: HashMap<String, usize>,
    user_index: HashMap<String, usize>,
    order_index: HashMap<String, usize>,
    user_digests: Vec<[u8; 32]>,
    order_digests: Vec<[u8; 32]>,
}

fn digest<T: Serialize>(record: &T) -> [u8; 32] {
    let json = serde_json::to_vec(record).unwrap_or_default();
    Sha256::digest(&json).into()
}

impl BaseDb {
    fn new(seed: u64, products: Vec<Product>, mut users: Vec<User>, mut orders: Vec<Order>) -> BaseDb {
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        orders.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        let product_index = products.iter().enumerate().map(|(i, p)| (p.product_id.clone(), i)).collect();
        let item_index =
            products.iter().enumerate().flat_map(|(i, p)| p.variants.keys().map(move |k| (k.clone(), i))).collect();
        let user_index = users.iter().enumerate().map(|(i, u)| (u.user_id.clone(), i)).collect();
        let order_index = orders.iter().enumerate().map(|(i, o)| (o.order_id.clone(), i)).collect();
        let user_digests = users.iter().map(digest).collect();
        let order_digests = orders.iter().map(digest).collect();
        BaseDb {
            seed,
            products,
            users,
            orders,
            product_index,
            item_index,
            user_index,
            order_index,
            user_digests,
            order_digests,
        }
    }

    /// The database generated from `seed`, built once per process and shared.
    pub fn shared(seed: u64) -> Result<Arc<BaseDb>, GymError> {
        static CACHE: LazyLock<Mutex<HashMap<u64, Arc<BaseDb>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
        if let Some(db) = CACHE.lock().ok().and_then(|c| c.get(&seed).cloned()) {
            return Ok(db);
        }
        let db = Arc::new(generate(catalog()?, seed));
        if let Ok(mut cache) = CACHE.lock() {
            cache.insert(seed, db.clone());
        }
        Ok(db)
    }

    pub fn product(&self, product_id: &str) -> Option<&Product> {
        self.product_index.get(product_id).map(|&i| &self.products[i])
    }

    /// The product and variant of an item id.
    pub fn variant(&self, item_id: &str) -> Option<(&Product, &Variant)> {
        let p = &self.products[*self.item_index.get(item_id)?];
        Some((p, p.variants.get(item_id)?))
    }

    pub fn user(&self, user_id: &str) -> Option<&User> {
        self.user_index.get(user_id).map(|&i| &self.users[i])
    }

    pub fn order(&self, order_id: &str) -> Option<&Order> {
        self.order_index.get(order_id).map(|&i| &self.orders[i])
    }
}

/// One episode's database: the shared base plus the records changed so far.
#[derive(Clone, Debug)]
pub struct Db {
    base: Arc<BaseDb>,
    users: HashMap<usize, User>,
    orders: HashMap<usize, Order>,
}

impl Db {
    pub fn new(base: Arc<BaseDb>) -> Db {
        Db { base, users: HashMap::new(), orders: HashMap::new() }
    }

    pub fn base(&self) -> &BaseDb {
        &self.base
    }

    pub fn products(&self) -> &[Product] {
        &self.base.products
    }

    pub fn product(&self, product_id: &str) -> Option<&Product> {
        self.base.product(product_id)
    }

    pub fn variant(&self, item_id: &str) -> Option<(&Product, &Variant)> {
        self.base.variant(item_id)
    }

    pub fn user(&self, user_id: &str) -> Option<&User> {
        let &i = self.base.user_index.get(user_id)?;
        self.users.get(&i).or(Some(&self.base.users[i]))
    }

    pub fn user_mut(&mut self, user_id: &str) -> Option<&mut User> {
        let &i = self.base.user_index.get(user_id)?;
        Some(self.users.entry(i).or_insert_with(|| self.base.users[i].clone()))
    }

    /// Every user in id order, with the changes of this episode.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        (0..self.base.users.len()).map(|i| self.users.get(&i).unwrap_or(&self.base.users[i]))
    }

    pub fn order(&self, order_id: &str) -> Option<&Order> {
        let &i = self.base.order_index.get(order_id)?;
        self.orders.get(&i).or(Some(&self.base.orders[i]))
    }

    pub fn order_mut(&mut self, order_id: &str) -> Option<&mut Order> {
        let &i = self.base.order_index.get(order_id)?;
        Some(self.orders.entry(i).or_insert_with(|| self.base.orders[i].clone()))
    }

    /// The canonical state hash: SHA-256 over (kind, id, record digest) of every user and order in id order.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (i, u) in self.base.users.iter().enumerate() {
            let d = self.users.get(&i).map(digest).unwrap_or(self.base.user_digests[i]);
            h.update(b"user\0");
            h.update(u.user_id.as_bytes());
            h.update(d);
        }
        for (i, o) in self.base.orders.iter().enumerate() {
            let d = self.orders.get(&i).map(digest).unwrap_or(self.base.order_digests[i]);
            h.update(b"order\0");
            h.update(o.order_id.as_bytes());
            h.update(d);
        }
        h.finalize().into()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Generation

fn digits(rng: &mut ChaCha8Rng, n: usize) -> String {
    let first = rng.random_range(1..=9u8);
    let mut s = first.to_string();
    for _ in 1..n {
        s.push(char::from(b'0' + rng.random_range(0..=9u8)));
    }
    s
}

/// A fresh id of `n` digits not used before.
fn fresh(rng: &mut ChaCha8Rng, n: usize, used: &mut HashSet<String>) -> String {
    loop {
        let s = digits(rng, n);
        if used.insert(s.clone()) {
            return s;
        }
    }
}

/// A price in the range whose cents do not end in 0, so that "54.31" cannot be written shorter ("54.3").
fn price(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    let dollars = rng.random_range(lo.max(1.0) as u64..=hi.max(lo.max(1.0) + 1.0) as u64);
    let mut cents = rng.random_range(1..=99u64);
    if cents % 10 == 0 {
        cents += 1;
    }
    round2(dollars as f64 + cents as f64 / 100.0)
}

fn address(rng: &mut ChaCha8Rng, c: &Catalog) -> Address {
    let place = c.places.choose(rng).cloned().unwrap_or(Place {
        city: String::new(),
        state: String::new(),
        zip: String::new(),
    });
    let street = c.streets.choose(rng).cloned().unwrap_or_default();
    let address2 = match rng.random_range(0..3) {
        0 => String::new(),
        1 => format!("Apt {}", rng.random_range(1..=40)),
        _ => format!("Suite {}", rng.random_range(100..=999)),
    };
    Address {
        address1: format!("{} {street}", rng.random_range(10..=9999)),
        address2,
        city: place.city,
        state: place.state,
        country: "USA".into(),
        zip: format!("{}{:02}", place.zip, rng.random_range(0..100)),
    }
}

/// Generates the database of `seed` from the catalog.
pub fn generate(c: &Catalog, seed: u64) -> BaseDb {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut used = HashSet::new();

    let mut products = Vec::new();
    for pt in &c.products {
        // Every combination of options, then a random subset of them is stocked.
        let mut combos: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
        for (key, values) in &pt.options {
            combos = combos
                .into_iter()
                .flat_map(|base| {
                    values.iter().map(move |v| {
                        let mut m = base.clone();
                        m.insert(key.clone(), v.clone());
                        m
                    })
                })
                .collect();
        }
        combos.shuffle(&mut rng);
        let n = rng.random_range(6..=12).min(combos.len());
        let mut variants = BTreeMap::new();
        for (k, options) in combos.into_iter().take(n).enumerate() {
            let item_id = fresh(&mut rng, 10, &mut used);
            // The first two stay available so that every product can be exchanged into something.
            let available = k < 2 || rng.random_bool(0.7);
            let variant = Variant {
                item_id: item_id.clone(),
                options,
                available,
                price: price(&mut rng, pt.price.0, pt.price.1),
            };
            variants.insert(item_id, variant);
        }
        products.push(Product { name: pt.name.clone(), product_id: fresh(&mut rng, 10, &mut used), variants });
    }

    let mut users = Vec::new();
    let mut orders = Vec::new();
    let mut used_names = HashSet::new();
    while users.len() < USER_COUNT {
        let (Some(first), Some(last)) = (c.first_names.choose(&mut rng), c.last_names.choose(&mut rng)) else { break };
        // Name and zip identify a user, so no two users share a full name.
        if !used_names.insert((first.clone(), last.clone())) {
            continue;
        }
        let tag = fresh(&mut rng, 4, &mut used);
        let user_id = format!("{}_{}_{tag}", first.to_lowercase(), last.to_lowercase());
        let email = format!("{}.{}{tag}@example.com", first.to_lowercase(), last.to_lowercase());
        let mut payment_methods = BTreeMap::new();
        let n_methods = rng.random_range(1..=3);
        let mut kinds = [0, 1, 2];
        kinds.shuffle(&mut rng);
        for &kind in kinds.iter().take(n_methods) {
            let pm = match kind {
                0 => PaymentMethod::CreditCard {
                    id: format!("credit_card_{}", fresh(&mut rng, 7, &mut used)),
                    brand: c.card_brands.choose(&mut rng).cloned().unwrap_or_default(),
                    last_four: format!("{:04}", rng.random_range(0..10_000)),
                },
                1 => PaymentMethod::GiftCard {
                    id: format!("gift_card_{}", fresh(&mut rng, 7, &mut used)),
                    balance: round2(rng.random_range(0..=400) as f64 + rng.random_range(1..=99) as f64 / 100.0),
                },
                _ => PaymentMethod::Paypal { id: format!("paypal_{}", fresh(&mut rng, 7, &mut used)) },
            };
            payment_methods.insert(pm.id().to_string(), pm);
        }
        let home = address(&mut rng, c);
        let method_ids: Vec<String> = payment_methods.keys().cloned().collect();
        let mut order_ids = Vec::new();
        for _ in 0..rng.random_range(1..=4) {
            let order_id = format!("#W{}", fresh(&mut rng, 7, &mut used));
            let mut picks: Vec<&Product> = products.iter().collect();
            picks.shuffle(&mut rng);
            let items: Vec<OrderItem> = picks
                .into_iter()
                .take(rng.random_range(1..=4))
                .filter_map(|p| {
                    let variants: Vec<&Variant> = p.variants.values().collect();
                    let v = variants.choose(&mut rng)?;
                    Some(OrderItem {
                        name: p.name.clone(),
                        product_id: p.product_id.clone(),
                        item_id: v.item_id.clone(),
                        price: v.price,
                        options: v.options.clone(),
                    })
                })
                .collect();
            let status = match rng.random_range(0..100) {
                0..30 => "pending",
                30..42 => "processed",
                42..90 => "delivered",
                _ => "cancelled",
            };
            let total = round2(items.iter().map(|i| i.price).sum());
            let method = method_ids.choose(&mut rng).cloned().unwrap_or_default();
            let mut payment_history = vec![Transaction {
                transaction_type: "payment".into(),
                amount: total,
                payment_method_id: method.clone(),
            }];
            let mut cancel_reason = None;
            if status == "cancelled" {
                payment_history.push(Transaction {
                    transaction_type: "refund".into(),
                    amount: total,
                    payment_method_id: method,
                });
                cancel_reason =
                    Some(if rng.random_bool(0.5) { "no longer needed" } else { "ordered by mistake" }.to_string());
            }
            let addr = if rng.random_bool(0.85) { home.clone() } else { address(&mut rng, c) };
            orders.push(Order {
                order_id: order_id.clone(),
                user_id: user_id.clone(),
                address: addr,
                items,
                status: status.into(),
                payment_history,
                cancel_reason,
                return_items: None,
                return_payment_method_id: None,
                exchange_items: None,
                exchange_new_items: None,
                exchange_payment_method_id: None,
                exchange_price_difference: None,
            });
            order_ids.push(order_id);
        }
        users.push(User {
            user_id,
            name: Name { first_name: first.clone(), last_name: last.clone() },
            address: home,
            email,
            payment_methods,
            orders: order_ids,
        });
    }
    BaseDb::new(seed, products, users, orders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_consistent() {
        let c = catalog().unwrap();
        let a = generate(c, 5);
        let b = generate(c, 5);
        assert_eq!(a.users, b.users);
        assert_eq!(a.orders, b.orders);
        assert_eq!(a.users.len(), USER_COUNT);
        for o in &a.orders {
            assert!(o.order_id.starts_with("#W") && o.order_id.len() == 9);
            assert!(a.user(&o.user_id).unwrap().orders.contains(&o.order_id));
            for it in &o.items {
                let (p, v) = a.variant(&it.item_id).unwrap();
                assert_eq!((p.product_id.as_str(), v.price), (it.product_id.as_str(), it.price));
            }
        }
        assert_ne!(generate(c, 6).orders, a.orders);
    }

    #[test]
    fn overlay_hash_tracks_changes_only() {
        let base = BaseDb::shared(DB_SEED).unwrap();
        let mut db = Db::new(base.clone());
        let fresh_hash = db.hash();
        let id = base.orders[0].order_id.clone();
        // Touching a record without changing it keeps the hash.
        let _ = db.order_mut(&id).unwrap();
        assert_eq!(db.hash(), fresh_hash);
        db.order_mut(&id).unwrap().status = "something else".into();
        assert_ne!(db.hash(), fresh_hash);
        assert_eq!(Db::new(base).hash(), fresh_hash);
    }
}
