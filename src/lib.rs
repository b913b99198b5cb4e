//! contact-sync: keeps an on-prem CRM's contact list in step with Google and Outlook
//! address books.
pub mod sim;
